// Package pool is pgharbor's PostgreSQL connection pooler: a wire-protocol proxy (pgproto3)
// with session and transaction pooling, read/write routing over the cluster's nodes, and an
// admin console.
//
// Glossary:
//   - client: a connection from an application; a session once logged in.
//   - server connection: a connection from the pool to a PostgreSQL node.
//   - pool: the server connections of one (node, database, user).
//   - attach / release: a session takes a server connection for a transaction (transaction
//     mode) or for its lifetime (session mode); it goes back only at a safe point,
//     ReadyForQuery with status idle and nothing outstanding.
//   - reader: a node that may serve read-only traffic (a standby within the lag limits, or
//     the primary by its weight), chosen by pool/cluster.
//   - pause: new transactions wait; running ones finish (for switchovers).
//   - engine: what runs a session: a goroutine per session (session.go, sessionserver.go)
//     or the event loop (evloop.go: its mechanics; evproto.go: what it does with messages
//     and answers; evbatch.go with uring_linux.go: a batch's reads and writes in one system
//     call each); evhandover.go moves sessions and server connections between them. The protocol state both share is in sessionstate.go, and the settings
//     that follow a client between server connections (and the role reset before another
//     client gets one) in settings.go.
//
// Buffer ownership: message slices returned by msgReader are valid until the next read on
// the same reader.
package pool
