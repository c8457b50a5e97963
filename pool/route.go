package pool

import (
	"encoding/binary"
	"regexp"
	"strings"
)

// Statement classification for statement-level load balancing. Like pgpool, a statement
// goes to a reader only when it is certainly read-only: a SELECT (or WITH/VALUES/TABLE)
// with no data-modifying CTE, no SELECT INTO, no row locks (FOR UPDATE/SHARE) and no call
// of a function known to write or to depend on the session (nextval, advisory locks …,
// plus the configured write_functions). Anything the lexer cannot vouch for goes to the
// primary.

var writeWords = map[string]bool{
	"insert": true, "update": true, "delete": true, "merge": true, "into": true,
	"nextval": true, "setval": true, "lastval": true, "currval": true,
	"set_config": true, "pg_notify": true, "txid_current": true, "pg_current_xact_id": true,
	"pg_switch_wal": true, "pg_terminate_backend": true, "pg_cancel_backend": true,
	"pg_reload_conf": true, "pg_rotate_logfile": true, "pg_promote": true,
	"pg_start_backup": true, "pg_stop_backup": true, "pg_backup_start": true, "pg_backup_stop": true,
	"lo_import": true, "lo_export": true, "lo_create": true, "lo_creat": true, "lo_unlink": true,
	"lo_open": true, "lo_write": true, "lo_put": true, "lo_from_bytea": true,
	"pg_logical_emit_message": true, "pg_log_backend_memory_contexts": true,
}

var writePrefixes = []string{"pg_advisory_", "pg_try_advisory_", "pg_create_", "pg_drop_", "pg_replication_origin_", "dblink", "pg_logical_slot_"}

// isReadOnlyQuery reports whether sql is safe to run on a standby outside a transaction.
func isReadOnlyQuery(sql string, extraWrite []string) bool {
	words, ok := sqlWords(sql)
	if !ok || len(words) == 0 {
		return false
	}
	first := true
	for i, w := range words {
		if w == ";" {
			first = true
			continue
		}
		if first {
			switch w {
			case "select", "with", "values", "table":
			default:
				return false
			}
			first = false
		}
		if writeWords[w] {
			return false
		}
		for _, p := range writePrefixes {
			if strings.HasPrefix(w, p) {
				return false
			}
		}
		for _, f := range extraWrite {
			if strings.EqualFold(w, f) {
				return false
			}
		}
		if w == "for" && i+1 < len(words) {
			switch words[i+1] {
			case "update", "share", "no", "key":
				return false
			}
		}
	}
	return true
}

// sqlWords lower-cases the identifiers and keywords of sql, skipping comments, literals and
// quoted identifiers; ";" separates statements. ok is false when the text cannot be lexed
// (an unterminated literal or comment).
func sqlWords(sql string) ([]string, bool) {
	var words []string
	s := sql
	for i := 0; i < len(s); {
		c := s[i]
		if startsQuoted(c) {
			end, quoted, found, ok := skipQuoted(s, i)
			if found {
				if !ok {
					return nil, false
				}
				if quoted {
					words = append(words, "\"")
				}
				i = end
				continue
			}
		}
		switch {
		case c == ';':
			words = append(words, ";")
			i++
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentChar(s[j]) {
				j++
			}
			words = append(words, strings.ToLower(s[i:j]))
			i = j
		default:
			i++
		}
	}
	// drop trailing separators
	for len(words) > 0 && words[len(words)-1] == ";" {
		words = words[:len(words)-1]
	}
	return words, true
}

// startsQuoted says whether c can begin what skipQuoted skips (a cheap test on the hot path).
func startsQuoted(c byte) bool { return c == '-' || c == '/' || c == '\'' || c == '"' || c == '$' }

// skipQuoted skips the comment, string literal (E” with backslash escapes), quoted
// identifier, dollar-quoted string or $n parameter that starts at s[i], and returns where it
// ends; quoted is true for a quoted identifier. found is false when none starts at i; ok is
// false when one starts but is not terminated. Every scanner of statement text uses it, so
// they agree on what is code.
func skipQuoted(s string, i int) (end int, quoted, found, ok bool) {
	c := s[i]
	switch {
	case c == '-' && i+1 < len(s) && s[i+1] == '-':
		j := strings.IndexByte(s[i:], '\n')
		if j < 0 {
			return len(s), false, true, true
		}
		return i + j + 1, false, true, true
	case c == '/' && i+1 < len(s) && s[i+1] == '*':
		depth, j := 1, i+2
		for j < len(s) && depth > 0 {
			switch {
			case strings.HasPrefix(s[j:], "/*"):
				depth++
				j += 2
			case strings.HasPrefix(s[j:], "*/"):
				depth--
				j += 2
			default:
				j++
			}
		}
		return j, false, true, depth == 0
	case c == '\'':
		escapes := i > 0 && (s[i-1] == 'e' || s[i-1] == 'E')
		j := i + 1
		for {
			if j >= len(s) {
				return j, false, true, false
			}
			if escapes && s[j] == '\\' {
				j += 2
				continue
			}
			if s[j] == '\'' {
				if j+1 < len(s) && s[j+1] == '\'' {
					j += 2
					continue
				}
				return j + 1, false, true, true
			}
			j++
		}
	case c == '"':
		j := strings.IndexByte(s[i+1:], '"')
		if j < 0 {
			return len(s), true, true, false
		}
		return i + j + 2, true, true, true
	case c == '$' && i+1 < len(s) && (s[i+1] == '$' || isIdentStart(s[i+1])) && (i == 0 || !isIdentChar(s[i-1])):
		j := i + 1
		for j < len(s) && s[j] != '$' && isIdentChar(s[j]) {
			j++
		}
		if j >= len(s) || s[j] != '$' {
			return j, false, true, true // $1 parameter or odd text
		}
		tag := s[i : j+1]
		k := strings.Index(s[j+1:], tag)
		if k < 0 {
			return len(s), false, true, false
		}
		return j + 1 + k + len(tag), false, true, true
	}
	return i, false, false, true
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80
}

func isIdentChar(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') || c == '$' }

// isShowPoolNodes reports whether a simple query is SHOW POOL_NODES.
func isShowPoolNodes(sql string) bool {
	s := strings.TrimSpace(sql)
	s = strings.TrimSpace(strings.TrimSuffix(s, ";"))
	f := strings.Fields(s)
	return len(f) == 2 && strings.EqualFold(f[0], "show") && strings.EqualFold(f[1], "pool_nodes")
}

// mentionsNodes is a cheap pre-check for isShowPoolNodes: does b contain "_nodes" in any case?
func mentionsNodes(b []byte) bool {
	for i := 0; i+6 <= len(b); i++ {
		if b[i] == '_' && (b[i+1]|0x20) == 'n' && (b[i+2]|0x20) == 'o' && (b[i+3]|0x20) == 'd' && (b[i+4]|0x20) == 'e' && (b[i+5]|0x20) == 's' {
			return true
		}
	}
	return false
}

// mentionsDealloc is a cheap check for DEALLOCATE or DISCARD anywhere in a query.
func mentionsDealloc(b []byte) bool {
	for i := 0; i+7 <= len(b); i++ {
		c := b[i] | 0x20
		if c == 'd' && i+7 <= len(b) {
			w := b[i+1 : i+7]
			if (w[0]|0x20) == 'i' && (w[1]|0x20) == 's' && (w[2]|0x20) == 'c' && (w[3]|0x20) == 'a' && (w[4]|0x20) == 'r' && (w[5]|0x20) == 'd' {
				return true
			}
			if (w[0]|0x20) == 'e' && (w[1]|0x20) == 'a' && (w[2]|0x20) == 'l' && (w[3]|0x20) == 'l' && (w[4]|0x20) == 'o' && (w[5]|0x20) == 'c' {
				return true
			}
		}
	}
	return false
}

// setConfigOID is pg_proc's fixed OID of set_config(text, text, boolean).
const setConfigOID = 2078

// callsSetConfig says whether a FunctionCall message (header included) calls set_config,
// which may set the role as SET ROLE does; a message too short to tell counts as one.
func callsSetConfig(msg []byte) bool {
	return len(msg) < 9 || binary.BigEndian.Uint32(msg[5:9]) == setConfigOID
}

// resetTargets returns the settings the statements of sql put back to their session
// defaults (their values at connection start): `RESET name`, `SET [SESSION] name {TO|=}
// DEFAULT`, and all of them (all) for `RESET ALL` and `DISCARD ALL`. Names are lower case,
// with dots for qualified ones; `TIME ZONE` is timezone. SET LOCAL, which ends with the
// transaction, and quoted names are left out.
func resetTargets(sql string) (names []string, all bool) {
	words, ok := sqlWords(sql)
	if !ok {
		return nil, false
	}
	for len(words) > 0 {
		end := 0
		for end < len(words) && words[end] != ";" {
			end++
		}
		st := words[:end]
		if end < len(words) {
			end++
		}
		words = words[end:]
		if len(st) < 2 {
			continue
		}
		var name []string
		switch st[0] {
		case "discard":
			if len(st) == 2 && st[1] == "all" {
				all = true
			}
			continue
		case "reset":
			if len(st) == 2 && st[1] == "all" {
				all = true
				continue
			}
			name = st[1:]
		case "set":
			rest := st[1:]
			if rest[0] == "session" {
				rest = rest[1:]
			}
			if len(rest) < 2 || rest[0] == "local" || rest[len(rest)-1] != "default" {
				continue
			}
			rest = rest[:len(rest)-1]
			if rest[len(rest)-1] == "to" {
				rest = rest[:len(rest)-1]
			}
			name = rest
		default:
			continue
		}
		if len(name) == 0 {
			continue
		}
		quoted := false
		for _, w := range name {
			quoted = quoted || w == "\""
		}
		if quoted {
			continue
		}
		n := strings.Join(name, ".")
		if n == "time.zone" {
			n = "timezone"
		}
		names = append(names, n)
	}
	return names, all
}

// splitStatements returns the statements of sql (without their ";"), skipping over
// comments, literals, quoted identifiers and dollar quotes; false when the text cannot be
// lexed (an unterminated literal or comment).
func splitStatements(sql string) ([]string, bool) {
	var out []string
	start := 0
	s := sql
	for i := 0; i < len(s); {
		c := s[i]
		if startsQuoted(c) {
			end, _, found, ok := skipQuoted(s, i)
			if found {
				if !ok {
					return nil, false
				}
				i = end
				continue
			}
		}
		if c == ';' {
			out = append(out, s[start:i])
			start = i + 1
		}
		i++
	}
	if strings.TrimSpace(s[start:]) != "" {
		out = append(out, s[start:])
	}
	return out, true
}

// setStmt matches a session-level SET of one setting: name and the value's text.
var setStmt = regexp.MustCompile(`(?is)^\s*set\s+(?:session\s+)?([a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?)\s*(?:=|\s+to\s+)\s*(.*?)\s*$`)

// notFollowed are names after SET that are not plain settings a client keeps (SET ROLE
// and SET SESSION AUTHORIZATION are reset instead, see serverConn.cleanUp), or settings the
// server reports, which the pool learns from its ParameterStatus messages.
var notFollowed = map[string]bool{
	"local": true, "role": true, "session": true, "authorization": true, "transaction": true,
	"constraints": true, "time": true, "names": true, "xml": true, "schema": true, "characteristics": true,
	"transaction_isolation": true, "transaction_read_only": true, "transaction_deferrable": true,
	"application_name": true, "client_encoding": true, "datestyle": true, "default_transaction_read_only": true,
	"in_hot_standby": true, "integer_datetimes": true, "intervalstyle": true, "is_superuser": true,
	"server_encoding": true, "server_version": true, "session_authorization": true,
	"standard_conforming_strings": true, "timezone": true,
}

// sessionSets returns the settings the statements of sql set for the session (SET [SESSION]
// name {TO|=} value), by lower-case name, with the value as written (SQL text), in order;
// DEFAULT values (see resetTargets), SET LOCAL and reported settings are left out.
func sessionSets(sql string) [][2]string {
	stmts, ok := splitStatements(sql)
	if !ok {
		return nil
	}
	var out [][2]string
	for _, st := range stmts {
		m := setStmt.FindStringSubmatch(st)
		if m == nil {
			continue
		}
		name := strings.ToLower(m[1])
		if notFollowed[name] || m[2] == "" || strings.EqualFold(m[2], "default") ||
			strings.Contains(m[2], "--") || strings.Contains(m[2], "/*") {
			continue // a comment in the value would swallow what the pool sends after it
		}
		out = append(out, [2]string{name, m[2]})
	}
	return out
}

// What scanText found in a statement text.
const (
	// textRole: the word "role" anywhere, as in SET ROLE, SET SESSION ROLE, RESET ROLE and
	// set_config('role', ...): the statement may change the role, which the server does not
	// report (SET SESSION AUTHORIZATION it does, and so is_superuser). A statement that does
	// not show it (a function that runs SET ROLE) is not caught; see docs/pool.md.
	textRole     = 1 << iota
	textReset    // RESET, DEFAULT or DISCARD: see resetTargets
	textSet      // SET at the start or after a ";" (one inside a literal only costs sessionSets)
	textRollback // ROLLBACK or ABORT
)

// scanText makes the cheap checks of a client's statement text in one pass (the pool runs it
// on every Query and Parse); the exact parsers run only when it finds something.
func scanText(b []byte) int {
	f := setAt(b, 0)
	for i, c := range b {
		if scanFirst[c] == 0 {
			continue // most bytes: one table look-up
		}
		switch c | 0x20 {
		case ';':
			f |= setAt(b, i+1)
		case 'r':
			if hasWordAt(b, i, "role") {
				f |= textRole
			} else if hasWordAt(b, i, "reset") {
				f |= textReset
			} else if hasWordAt(b, i, "rollback") {
				f |= textRollback
			}
		case 'd':
			if hasWordAt(b, i, "default") || hasWordAt(b, i, "discard") {
				f |= textReset
			}
		case 'a':
			if hasWordAt(b, i, "abort") {
				f |= textRollback
			}
		}
	}
	return f
}

// scanFirst marks the bytes a word scanText looks for can start with.
var scanFirst = [256]uint8{';': 1, 'r': 1, 'R': 1, 'd': 1, 'D': 1, 'a': 1, 'A': 1}

// setAt returns textSet when a statement starting at i (after white space) is a SET.
func setAt(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	if i+3 < len(b) && (b[i]|0x20) == 's' && (b[i+1]|0x20) == 'e' && (b[i+2]|0x20) == 't' &&
		(b[i+3] == ' ' || b[i+3] == '\t' || b[i+3] == '\n' || b[i+3] == '\r') {
		return textSet
	}
	return 0
}

// hasWordAt says whether b holds word (lower-case ASCII) at i, ignoring case.
func hasWordAt(b []byte, i int, word string) bool {
	if i+len(word) > len(b) {
		return false
	}
	for j := 1; j < len(word); j++ {
		if b[i+j]|0x20 != word[j] {
			return false
		}
	}
	return true
}
