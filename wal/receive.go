package wal

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
)

// Defaults of ReceiveOptions.
const (
	DefaultReceiveSlot          = "pgharbor"
	DefaultReceiveAppName       = "pgharbor"
	DefaultReceiveFlushInterval = time.Second
	DefaultReceiveFlushBytes    = 4 << 20
	receiveStatusInterval       = 10 * time.Second
	syncFlushDelay              = time.Millisecond
	// receiveTailDelay is how long the stream must stay quiet after a burst (WAL arriving
	// faster than FlushBytes per FlushInterval) before the receiver stores its tail instead
	// of waiting for the timer.
	receiveTailDelay = 50 * time.Millisecond
	// maxTailCredits bounds the small tail stores a burst earns (one per FlushBytes or
	// completed segment stored): a trickle of WAL after a burst gets at most this many
	// stores before the timer paces it again.
	maxTailCredits = 4
	// receiveWindow is the zstd window of the receiver's frames: the encoder keeps twice
	// that in memory, and WAL compresses no better with a longer one (its repeats are near
	// each other: full-page images and the records that follow them).
	receiveWindow = 1 << 20
	// A pause stores at least FlushBytes/largeTailDivisor at once, credits or not: a burst
	// pauses now and then before its real end, whenever the server has sent all it
	// flushed, and pieces that large keep the number of objects bounded by the WAL stored.
	largeTailDivisor = 16
)

// ReceiveOptions configure Receive.
type ReceiveOptions struct {
	// ConnString reaches the server as a user with the REPLICATION attribute; replication
	// mode is added.
	ConnString string
	// Slot is the physical replication slot streamed from (DefaultReceiveSlot when empty).
	Slot string
	// CreateSlot creates the slot when it does not exist.
	CreateSlot bool
	// ApplicationName is what the server calls this receiver (synchronous_standby_names
	// names it to make commits wait until their WAL is in the repository).
	ApplicationName string
	// FlushInterval is how long received WAL may wait before it is stored (default 1 s);
	// FlushBytes how much may wait (default 4 MiB).
	FlushInterval time.Duration
	FlushBytes    int64
	// Synchronous stores received WAL as soon as the server pauses sending, instead of
	// waiting for FlushInterval: a commit waiting for this receiver then waits only for
	// the upload.
	Synchronous bool
	// Once returns the first error instead of reconnecting (tests, and the first attempt of
	// the foreground command).
	Once   bool
	Logger *slog.Logger
	// Status, when set, is told the receiver's state after every change.
	Status func(ReceiverStatus)
}

// ReceiverStatus is what `info` and the server's metrics show of a receiver.
type ReceiverStatus struct {
	Slot      string     `json:"slot"`
	Streaming bool       `json:"streaming"`
	Timeline  TimelineID `json:"timeline"`
	// Received is the end of the WAL received; Stored the end of what is in the repository
	// (and reported to the server as flushed).
	Received LSN `json:"received"`
	Stored   LSN `json:"stored"`
	// ServerEnd is the server's WAL end at its last message.
	ServerEnd LSN       `json:"server_end"`
	StoredAt  time.Time `json:"stored_at,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	// Reported is when the receiver last wrote this status into the repository.
	Reported time.Time `json:"reported"`
}

// receiverStatusKey is where a receiver's status lives: clear JSON, rewritten as it goes.
func receiverStatusKey(r *repo.Repo, slot string) string {
	return r.Key("receivers", slot+".json")
}

// ReceiverStatuses returns the last status every receiver of r's cluster reported.
func ReceiverStatuses(ctx context.Context, r *repo.Repo) ([]ReceiverStatus, error) {
	prefix := r.Key("receivers") + "/"
	var keys []string
	if err := r.Backend().List(ctx, prefix, func(o storage.ObjectInfo) error {
		if strings.HasSuffix(o.Key, ".json") {
			keys = append(keys, o.Key)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list %s: %w", r.Location(prefix), err)
	}
	out := []ReceiverStatus{}
	for _, k := range keys {
		var st ReceiverStatus
		if err := r.GetClearJSON(ctx, k, &st); err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// report writes the receiver's status into the repository (best effort: progress, not data).
func (rc *receiver) report(ctx context.Context) {
	rc.mu.Lock()
	rc.st.Slot = rc.o.Slot
	rc.st.Reported = time.Now().UTC()
	st := rc.st
	rc.mu.Unlock()
	if err := rc.r.PutClearJSON(ctx, receiverStatusKey(rc.r, rc.o.Slot), st); err != nil {
		rc.log.Debug("receiver status not stored", "err", err)
	}
}

// ErrReceiverConfig wraps errors that reconnecting cannot fix (authentication, privilege,
// server settings, a missing slot).
var ErrReceiverConfig = errors.New("the WAL receiver cannot stream from this server")

// Receive streams WAL from a physical replication slot into the repository until ctx ends:
// the segment being written is stored as pieces ("<segment>.<from>-<to>.stream") every
// FlushInterval or FlushBytes, and each completed segment as the ordinary segment object,
// the same bytes `wal push` stores for it (write-once: identical bytes from both paths are
// accepted, different ones refused). The server is told WAL is flushed only once it is in
// the repository, so the slot keeps everything not yet stored, and a synchronous commit
// waits for the repository. On connection loss it reconnects with backoff, from the slot's
// position (the start of the segment holding it, which the server still has).
func Receive(ctx context.Context, r *repo.Repo, o ReceiveOptions) error {
	if o.Slot == "" {
		o.Slot = DefaultReceiveSlot
	}
	if o.ApplicationName == "" {
		o.ApplicationName = DefaultReceiveAppName
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultReceiveFlushInterval
	}
	if o.FlushBytes <= 0 {
		o.FlushBytes = DefaultReceiveFlushBytes
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if !validSlotName(o.Slot) {
		return fmt.Errorf("%w: slot name %q: use lower-case letters, digits and underscores", ErrReceiverConfig, o.Slot)
	}
	rc := &receiver{r: r, o: o, log: o.Logger}
	defer func() {
		rc.setErr(nil)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rc.report(sctx)
		cancel()
	}()
	backoff := time.Second
	for {
		err := rc.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rc.setErr(err)
		rc.report(ctx)
		if o.Once || errors.Is(err, ErrReceiverConfig) && !rc.everStreamed {
			return err
		}
		o.Logger.Warn("WAL receiver lost its stream; reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		if rc.streamedSince(backoff) {
			backoff = time.Second
		} else {
			backoff = min(2*backoff, 30*time.Second)
		}
	}
}

func validSlotName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

type receiver struct {
	r            *repo.Repo
	o            ReceiveOptions
	log          *slog.Logger
	mu           sync.Mutex
	st           ReceiverStatus
	everStreamed bool
	lastData     time.Time

	segSize int64
	tli     TimelineID
	seg     Segment
	recvd   int64  // bytes of the current segment received
	stored  int64  // of them, the bytes in the repository
	head    []byte // the segment's first bytes (its long page header), checked when it completes
	// The received bytes are compressed as they arrive, into frames that end at every
	// flush: a piece is sealed from the frame of its bytes, the completed segment from all
	// of them, so no plain copy of the segment is kept and no byte is compressed twice.
	fe       *codec.FrameEncoder
	pieceAt  int       // where in fe.Bytes() the frame of the bytes not yet stored starts
	segSum   hash.Hash // SHA-256 of the segment's bytes received
	pieceSum hash.Hash // SHA-256 of the bytes not yet stored
	sealed   []byte    // the object sealed last, whose storage the next one reuses
}

// resetSegment starts the segment rc.seg with nothing received.
func (rc *receiver) resetSegment() {
	rc.recvd, rc.stored, rc.pieceAt = 0, 0, 0
	rc.head = rc.head[:0]
	rc.fe.Reset()
	rc.segSum.Reset()
	rc.pieceSum.Reset()
}

func (rc *receiver) setErr(err error) {
	rc.mu.Lock()
	rc.st.Streaming = false
	if err != nil {
		rc.st.LastError = err.Error()
	}
	st := rc.st
	rc.mu.Unlock()
	if rc.o.Status != nil {
		rc.o.Status(st)
	}
}

func (rc *receiver) update(f func(*ReceiverStatus)) {
	rc.mu.Lock()
	f(&rc.st)
	st := rc.st
	rc.mu.Unlock()
	if rc.o.Status != nil {
		rc.o.Status(st)
	}
}

func (rc *receiver) streamedSince(d time.Duration) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return time.Since(rc.lastData) < 2*d
}

// classify turns a server's refusal into a message that says what to change.
func classify(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch {
	case pe.Code == "28000" || pe.Code == "28P01":
		return fmt.Errorf("%w: authentication failed or pg_hba.conf has no replication entry for this user and host: %v", ErrReceiverConfig, err)
	case pe.Code == "42501":
		return fmt.Errorf("%w: the user lacks the REPLICATION attribute (ALTER ROLE … REPLICATION): %v", ErrReceiverConfig, err)
	case pe.Code == "53300" || strings.Contains(pe.Message, "max_wal_senders"):
		return fmt.Errorf("%w: no free WAL sender: raise max_wal_senders (a server with wal_level = minimal has none: set wal_level = replica): %v", ErrReceiverConfig, err)
	case strings.Contains(pe.Message, "wal_level"):
		return fmt.Errorf("%w: the server needs wal_level = replica or logical: %v", ErrReceiverConfig, err)
	case pe.Code == "42704" && strings.Contains(pe.Message, "replication slot"):
		return fmt.Errorf("%w: %v (create it with --create-slot)", ErrReceiverConfig, err)
	case pe.Code == "55006":
		return fmt.Errorf("%w: the slot is in use by another receiver: %v", ErrReceiverConfig, err)
	}
	return err
}

func replicationConnString(s string) string {
	if strings.Contains(s, "://") {
		sep := "?"
		if strings.Contains(s, "?") {
			sep = "&"
		}
		return s + sep + "replication=true"
	}
	return s + " replication=true"
}

// session is one connection: identify, find or create the slot, stream until an error.
func (rc *receiver) session(ctx context.Context) error {
	cfg, err := pgconn.ParseConfig(replicationConnString(rc.o.ConnString))
	if err != nil {
		return fmt.Errorf("%w: connection string: %v", ErrReceiverConfig, err)
	}
	cfg.RuntimeParams["application_name"] = rc.o.ApplicationName
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return classify(fmt.Errorf("connect: %w", err))
	}
	defer conn.Close(context.Background())
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return classify(fmt.Errorf("IDENTIFY_SYSTEM: %w", err))
	}
	if err := rc.attach(ctx, conn, sys.SystemID); err != nil {
		return err
	}
	startLSN, tli, err := rc.slotStart(ctx, conn, TimelineID(sys.Timeline))
	if err != nil {
		return err
	}
	for {
		next, err := rc.stream(ctx, conn, tli, startLSN)
		if err != nil || next == nil {
			return err
		}
		// The timeline ended (the server followed a promotion): keep its history and go on.
		if err := rc.storeHistory(ctx, conn, TimelineID(next.Timeline)); err != nil {
			return err
		}
		rc.log.Info("WAL receiver follows a new timeline", "timeline", next.Timeline, "from", LSN(next.LSN))
		tli, startLSN = TimelineID(next.Timeline), SegmentOf(LSN(next.LSN), TimelineID(next.Timeline), rc.segSize).StartLSN(rc.segSize)
	}
}

// attach checks that the server is the repository's and records its facts.
func (rc *receiver) attach(ctx context.Context, conn *pgconn.PgConn, sysid string) error {
	res, err := conn.Exec(ctx, "SHOW wal_segment_size").ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		return classify(fmt.Errorf("SHOW wal_segment_size: %w", err))
	}
	size, err := ParsePGSize(string(res[0].Rows[0][0]))
	if err != nil {
		return err
	}
	if err := CheckSegmentSize(size); err != nil {
		return err
	}
	rc.segSize = size
	id := repo.Identity{SystemIdentifier: sysid, WALSegmentSize: size}
	if v := conn.ParameterStatus("server_version"); v != "" {
		major, _, _ := strings.Cut(v, ".")
		if n, err := strconv.Atoi(strings.Fields(major)[0]); err == nil {
			id.PGVersion = n * 10000
		}
	}
	id.Encryption = repo.EncryptionMode(rc.r.Codec())
	id.Recipients = rc.r.Codec().Fingerprints()
	if err := attach(ctx, rc.r, id); err != nil {
		return fmt.Errorf("%w: %v", ErrReceiverConfig, err)
	}
	return nil
}

// ParsePGSize reads PostgreSQL's display of a size setting ("16MB", "1GB", "8192").
func ParsePGSize(s string) (int64, error) {
	mult := int64(1)
	for suffix, m := range map[string]int64{"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	return n * mult, nil
}

// slotStart reads (or creates) the slot and returns where to stream from: the start of the
// segment holding the slot's restart position, which the server keeps whole.
func (rc *receiver) slotStart(ctx context.Context, conn *pgconn.PgConn, serverTLI TimelineID) (LSN, TimelineID, error) {
	read := func() (LSN, TimelineID, bool, error) {
		res, err := conn.Exec(ctx, "READ_REPLICATION_SLOT "+rc.o.Slot).ReadAll()
		if err != nil {
			return 0, 0, false, classify(fmt.Errorf("READ_REPLICATION_SLOT %s: %w", rc.o.Slot, err))
		}
		if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
			return 0, 0, false, fmt.Errorf("READ_REPLICATION_SLOT %s: unexpected reply", rc.o.Slot)
		}
		row := res[0].Rows[0]
		if row[0] == nil {
			return 0, 0, false, nil
		}
		if string(row[0]) != "physical" {
			return 0, 0, false, fmt.Errorf("%w: slot %s is a %s slot, not a physical one", ErrReceiverConfig, rc.o.Slot, row[0])
		}
		if row[1] == nil {
			return 0, 0, true, nil // exists, but reserves no WAL yet
		}
		lsn, err := ParseLSN(string(row[1]))
		if err != nil {
			return 0, 0, false, err
		}
		tli := serverTLI
		if row[2] != nil {
			if n, err := strconv.ParseUint(string(row[2]), 10, 32); err == nil {
				tli = TimelineID(n)
			}
		}
		return lsn, tli, true, nil
	}
	lsn, tli, ok, err := read()
	if err != nil {
		return 0, 0, err
	}
	if !ok {
		if !rc.o.CreateSlot {
			return 0, 0, fmt.Errorf("%w: replication slot %q does not exist on the server (create it with --create-slot)", ErrReceiverConfig, rc.o.Slot)
		}
		if _, err := conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+rc.o.Slot+" PHYSICAL RESERVE_WAL").ReadAll(); err != nil {
			return 0, 0, classify(fmt.Errorf("CREATE_REPLICATION_SLOT %s: %w", rc.o.Slot, err))
		}
		rc.log.Info("replication slot created", "slot", rc.o.Slot)
		if lsn, tli, ok, err = read(); err != nil || !ok || lsn == 0 {
			return 0, 0, fmt.Errorf("slot %s after creating it: %v", rc.o.Slot, err)
		}
		rc.reportGap(ctx, lsn, tli)
	}
	if lsn == 0 {
		return 0, 0, fmt.Errorf("%w: slot %s reserves no WAL (it was created without RESERVE_WAL): drop it or name another", ErrReceiverConfig, rc.o.Slot)
	}
	return SegmentOf(lsn, tli, rc.segSize).StartLSN(rc.segSize), tli, nil
}

// reportGap logs WAL that a freshly created slot cannot give back: what the repository
// lacks between its newest WAL and where the slot starts (info and verify show the gap).
func (rc *receiver) reportGap(ctx context.Context, start LSN, tli TimelineID) {
	arch, err := ListArchive(ctx, rc.r)
	if err != nil {
		return
	}
	for _, t := range arch.Timelines {
		if t.TLI != tli || t.Last == "" {
			continue
		}
		last, err := ParseSegmentName(t.Last, rc.segSize)
		if err == nil && SegmentOf(start, tli, rc.segSize).No > last.No+1 {
			rc.log.Error("the replication slot was created anew: WAL after the newest archived segment and before the slot's start is not in the repository (unless archive_command pushes it); `pgharbor info` shows the gap",
				"newest_archived", t.Last, "slot_starts_at", start)
		}
	}
}

func (rc *receiver) storeHistory(ctx context.Context, conn *pgconn.PgConn, tli TimelineID) error {
	h, err := pglogrepl.TimelineHistory(ctx, conn, int32(tli))
	if err != nil {
		return fmt.Errorf("TIMELINE_HISTORY %d: %w", tli, err)
	}
	if _, err := pushData(ctx, rc.r, HistoryFileName(tli), h.Content); err != nil {
		return err
	}
	return nil
}

// stream runs START_REPLICATION from start on tli; it returns the next timeline when the
// server ends this one, or an error.
func (rc *receiver) stream(ctx context.Context, conn *pgconn.PgConn, tli TimelineID, start LSN) (*pglogrepl.CopyDoneResult, error) {
	rc.tli = tli
	rc.seg = SegmentOf(start, tli, rc.segSize)
	if rc.fe == nil {
		fe, err := rc.r.Codec().NewFrameEncoder(int(min(rc.o.FlushBytes, rc.segSize, receiveWindow)))
		if err != nil {
			return nil, err
		}
		rc.fe, rc.segSum, rc.pieceSum = fe, sha256.New(), sha256.New()
		rc.head = make([]byte, 0, longHeaderSize)
	}
	rc.resetSegment()
	err := pglogrepl.StartReplication(ctx, conn, rc.o.Slot, pglogrepl.LSN(start), pglogrepl.StartReplicationOptions{Timeline: int32(tli), Mode: pglogrepl.PhysicalReplication})
	if next, nextLSN, ok := pglogrepl.IsErrEndTimeline(err); ok {
		return &pglogrepl.CopyDoneResult{Timeline: int32(next), LSN: nextLSN}, nil
	}
	if err != nil {
		return nil, classify(fmt.Errorf("START_REPLICATION from %s on timeline %d: %w", start, tli, err))
	}
	rc.log.Info("WAL receiver streaming", "slot", rc.o.Slot, "timeline", tli, "from", start)
	rc.everStreamed = true
	rc.update(func(s *ReceiverStatus) { s.Streaming, s.Timeline, s.LastError = true, tli, "" })
	rc.report(ctx)
	lastFlush, nextStatus := time.Now(), time.Now().Add(receiveStatusInterval)
	var pendingSince time.Time // when the oldest byte not yet stored arrived
	var lastData time.Time     // when WAL arrived last
	// When a burst pauses, its tail is stored at once instead of at the next tick: the next
	// WAL may be far off. A large tail always is; a small one only with a credit, earned by
	// a store due to FlushBytes or a completed segment, so the number of objects stays
	// bounded by FlushInterval and FlushBytes, and a trickle of WAL is stored by the timer.
	tailCredits := 0
	for {
		now := time.Now()
		if !now.Before(nextStatus) {
			if err := rc.sendStatus(ctx, conn, false); err != nil {
				return nil, err
			}
			rc.report(ctx)
			nextStatus = now.Add(receiveStatusInterval)
		}
		deadline := nextStatus
		tail := lastData.Add(receiveTailDelay)
		if rc.recvd > rc.stored {
			due := lastFlush.Add(rc.o.FlushInterval)
			if large := rc.recvd-rc.stored >= rc.o.FlushBytes/largeTailDivisor; (large || tailCredits > 0) && tail.Before(due) {
				due = tail
			}
			if rc.o.Synchronous {
				// Commits are waiting: store what came as soon as the server pauses, and
				// under a steady stream no later than a moment after it arrived (the
				// deadline counts from the oldest unstored byte, or a trickle of WAL
				// would put the flush off until FlushBytes).
				due = pendingSince.Add(syncFlushDelay)
			}
			if due.Before(deadline) {
				deadline = due
			}
		}
		var msg pgproto3.BackendMessage
		var err error
		var timedOut bool
		if deadline.After(now) {
			rctx, cancel := context.WithDeadline(ctx, deadline)
			msg, err = conn.ReceiveMessage(rctx)
			timedOut = err != nil && ctx.Err() == nil && (pgconn.Timeout(err) || rctx.Err() != nil)
			cancel()
		} else {
			timedOut = true // due already: no wait (a context past its deadline is an error to pgconn)
		}
		if timedOut {
			if now := time.Now(); rc.recvd > rc.stored && !now.Before(deadline) {
				small := rc.recvd-rc.stored < rc.o.FlushBytes/largeTailDivisor
				if small && tailCredits > 0 && now.Before(lastFlush.Add(rc.o.FlushInterval)) {
					tailCredits--
				}
				if err := rc.flush(ctx, conn); err != nil {
					return nil, err
				}
				lastFlush = time.Now()
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return nil, err
				}
				rc.update(func(s *ReceiverStatus) { s.ServerEnd = LSN(ka.ServerWALEnd) })
				if ka.ReplyRequested {
					if err := rc.sendStatus(ctx, conn, false); err != nil {
						return nil, err
					}
					nextStatus = time.Now().Add(receiveStatusInterval)
				}
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return nil, err
				}
				if rc.recvd == rc.stored {
					pendingSince = time.Now()
				}
				completed, err := rc.data(ctx, conn, LSN(x.WALStart), x.WALData)
				if err != nil {
					return nil, err
				}
				if completed {
					tailCredits = min(tailCredits+1, maxTailCredits)
				}
				lastData = time.Now()
				rc.mu.Lock()
				rc.lastData = lastData
				rc.mu.Unlock()
				rc.update(func(s *ReceiverStatus) {
					s.ServerEnd = LSN(x.ServerWALEnd)
					s.Received = rc.seg.StartLSN(rc.segSize) + LSN(rc.recvd)
				})
				if rc.recvd-rc.stored >= rc.o.FlushBytes {
					if err := rc.flush(ctx, conn); err != nil {
						return nil, err
					}
					lastFlush = time.Now()
					tailCredits = min(tailCredits+1, maxTailCredits)
				}
			}
		case *pgproto3.CopyDone:
			// The server ended the timeline: store what we have, then learn the next one.
			if err := rc.flush(ctx, conn); err != nil {
				return nil, err
			}
			next, err := pglogrepl.SendStandbyCopyDone(ctx, conn)
			if err != nil {
				return nil, fmt.Errorf("end of timeline %d: %w", tli, err)
			}
			if next == nil {
				return nil, fmt.Errorf("timeline %d ended without naming the next one", tli)
			}
			return next, nil
		case *pgproto3.ErrorResponse:
			return nil, classify(pgconn.ErrorResponseToPgError(m))
		}
	}
}

// data takes in received WAL, storing each segment as it completes; completed says whether
// one did.
func (rc *receiver) data(ctx context.Context, conn *pgconn.PgConn, at LSN, b []byte) (completed bool, err error) {
	want := rc.seg.StartLSN(rc.segSize) + LSN(rc.recvd)
	if at != want {
		return false, fmt.Errorf("the server sent WAL from %s, but the stream was at %s", at, want)
	}
	for len(b) > 0 {
		n := int(min(int64(len(b)), rc.segSize-rc.recvd))
		chunk := b[:n]
		b = b[n:]
		if len(rc.head) < longHeaderSize {
			rc.head = append(rc.head, chunk[:min(n, longHeaderSize-len(rc.head))]...)
		}
		if _, err := rc.fe.Write(chunk); err != nil {
			return completed, err
		}
		rc.segSum.Write(chunk)
		rc.pieceSum.Write(chunk)
		rc.recvd += int64(n)
		if rc.recvd == rc.segSize {
			if err := rc.complete(ctx, conn); err != nil {
				return completed, err
			}
			completed = true
		}
	}
	return completed, nil
}

// flush stores the received bytes of the current segment not yet stored as a piece, then
// tells the server they are flushed.
func (rc *receiver) flush(ctx context.Context, conn *pgconn.PgConn) error {
	from, to := rc.stored, rc.recvd
	if to == from {
		return nil
	}
	name, err := rc.seg.SegmentName(rc.segSize)
	if err != nil {
		return err
	}
	piece := StreamName(name, from, to)
	if err := rc.fe.EndFrame(); err != nil {
		return fmt.Errorf("store %s: %w", piece, err)
	}
	var sum [32]byte
	rc.pieceSum.Sum(sum[:0])
	if rc.sealed, err = rc.r.Codec().SealCompressed(rc.sealed, rc.fe.Bytes()[rc.pieceAt:], sum); err != nil {
		return fmt.Errorf("store %s: seal: %w", piece, err)
	}
	if err := pushSealed(ctx, rc.r, piece, rc.sealed, sum); err != nil {
		return fmt.Errorf("store %s: %w", piece, err)
	}
	rc.log.Debug("streamed WAL stored", "object", piece, "bytes", to-from)
	rc.pieceAt = len(rc.fe.Bytes())
	rc.pieceSum.Reset()
	rc.stored = to
	rc.markStored(to)
	return rc.sendStatus(ctx, conn, false)
}

func (rc *receiver) markStored(off int64) {
	end := rc.seg.StartLSN(rc.segSize) + LSN(off)
	rc.update(func(s *ReceiverStatus) { s.Stored, s.StoredAt = end, time.Now() })
}

// complete stores the finished segment as the ordinary segment object, sealed from the
// frames of all its bytes (decoded, the same bytes and SHA-256 as `wal push` stores for it),
// and removes its pieces.
func (rc *receiver) complete(ctx context.Context, conn *pgconn.PgConn) error {
	name, err := rc.seg.SegmentName(rc.segSize)
	if err != nil {
		return err
	}
	h, err := checkSegment(name, KindPartial, rc.head)
	if err != nil {
		return fmt.Errorf("received segment %s: %w", name, err)
	}
	if h.SegmentSize != rc.segSize {
		return fmt.Errorf("received segment %s: its header says segments are %d bytes, the server %d", name, h.SegmentSize, rc.segSize)
	}
	if err := rc.fe.EndFrame(); err != nil {
		return fmt.Errorf("store %s: %w", name, err)
	}
	var sum [32]byte
	rc.segSum.Sum(sum[:0])
	if rc.sealed, err = rc.r.Codec().SealCompressed(rc.sealed, rc.fe.Bytes(), sum); err != nil {
		return fmt.Errorf("store %s: seal: %w", name, err)
	}
	if err := pushSealed(ctx, rc.r, name, rc.sealed, sum); err != nil {
		return err
	}
	rc.log.Debug("streamed WAL stored", "object", name, "bytes", rc.segSize-rc.stored)
	rc.markStored(rc.segSize)
	if err := rc.sendStatus(ctx, conn, false); err != nil {
		return err
	}
	if err := removeStreamed(ctx, rc.r, name); err != nil {
		rc.log.Warn("streamed pieces of a completed segment not removed; the next completed segment or expire removes them", "segment", name, "err", err)
	}
	rc.seg = rc.seg.Next()
	rc.resetSegment()
	return nil
}

// removeStreamed deletes the pieces `wal receive` stored of segment name, once the segment
// itself is stored.
func removeStreamed(ctx context.Context, r *repo.Repo, name string) error {
	dir := r.Key(Dir, name[:16]) + "/"
	var keys []string
	err := r.Backend().List(ctx, dir+name+".", func(o storage.ObjectInfo) error {
		if IsStreamName(path.Base(o.Key)) {
			keys = append(keys, o.Key)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := r.Backend().Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

func (rc *receiver) sendStatus(ctx context.Context, conn *pgconn.PgConn, reply bool) error {
	rc.mu.Lock()
	st := rc.st
	rc.mu.Unlock()
	stored := rc.seg.StartLSN(rc.segSize) + LSN(rc.stored)
	if stored < st.Stored {
		stored = st.Stored
	}
	received := rc.seg.StartLSN(rc.segSize) + LSN(rc.recvd)
	err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(received),
		WALFlushPosition: pglogrepl.LSN(stored),
		WALApplyPosition: pglogrepl.LSN(stored),
		ReplyRequested:   reply,
	})
	if err != nil {
		return fmt.Errorf("send status: %w", err)
	}
	return nil
}
