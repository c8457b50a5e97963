package backup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// baseBackupStream reads the replies to BASE_BACKUP (PostgreSQL 15 protocol: two result sets,
// one COPY stream of archives and the manifest, a final result set).
type baseBackupStream struct {
	conn *pgconn.PgConn
	ctx  context.Context

	startLSN    string
	startTLI    uint32
	tablespaces []Tablespace
	totalSize   int64 // estimated size from the tablespace result set, bytes

	// copy phase state
	pending  []byte // a message that ended the current archive: 'n', 'm' or nil at CopyDone
	done     bool   // CopyDone seen
	inData   bool   // inside an archive or the manifest
	progress int64
	// onProgress, when set, is called with the server's byte count.
	onProgress func(int64)
}

// quoteLiteral quotes s as an SQL string literal for the replication grammar.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func startBaseBackup(ctx context.Context, conn *pgconn.PgConn, label string, fast bool) (*baseBackupStream, error) {
	checkpoint := "spread"
	if fast {
		checkpoint = "fast"
	}
	// WAIT false: the server would wait for its archiver without limit (a broken
	// archive_command hangs the backup); pgharbor checks the repository itself, with a
	// timeout and a message naming the missing segment (Options.ArchiveCheck).
	sql := fmt.Sprintf("BASE_BACKUP (LABEL %s, PROGRESS, CHECKPOINT '%s', WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C')",
		quoteLiteral(label), checkpoint)
	conn.Frontend().Send(&pgproto3.Query{String: sql})
	if err := conn.Frontend().Flush(); err != nil {
		return nil, fmt.Errorf("send BASE_BACKUP: %w", err)
	}
	s := &baseBackupStream{conn: conn, ctx: ctx}
	rows, err := s.resultSet()
	if err != nil {
		return nil, fmt.Errorf("BASE_BACKUP start: %w", err)
	}
	if len(rows) != 1 || len(rows[0]) < 2 || rows[0][0] == nil || rows[0][1] == nil {
		return nil, fmt.Errorf("BASE_BACKUP start: unexpected reply %v", rows)
	}
	s.startLSN = *rows[0][0]
	tli, err := strconv.ParseUint(*rows[0][1], 10, 32)
	if err != nil {
		return nil, fmt.Errorf("BASE_BACKUP start timeline %q: %w", *rows[0][1], err)
	}
	s.startTLI = uint32(tli)
	rows, err = s.resultSet()
	if err != nil {
		return nil, fmt.Errorf("BASE_BACKUP tablespaces: %w", err)
	}
	for _, row := range rows {
		if len(row) < 3 {
			return nil, fmt.Errorf("BASE_BACKUP tablespaces: unexpected row %v", row)
		}
		if row[2] != nil {
			if kb, err := strconv.ParseInt(*row[2], 10, 64); err == nil {
				s.totalSize += kb * 1024
			}
		}
		if row[0] == nil { // the data directory itself
			continue
		}
		oid, err := strconv.ParseUint(*row[0], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("BASE_BACKUP tablespace oid %q: %w", *row[0], err)
		}
		loc := ""
		if row[1] != nil {
			loc = *row[1]
		}
		s.tablespaces = append(s.tablespaces, Tablespace{OID: uint32(oid), Location: loc})
	}
	// Then the COPY stream starts.
	msg, err := s.receive()
	if err != nil {
		return nil, err
	}
	if _, ok := msg.(*pgproto3.CopyOutResponse); !ok {
		return nil, fmt.Errorf("BASE_BACKUP: expected CopyOutResponse, got %T", msg)
	}
	return s, nil
}

func (s *baseBackupStream) receive() (pgproto3.BackendMessage, error) {
	msg, err := s.conn.ReceiveMessage(s.ctx)
	if err != nil {
		return nil, fmt.Errorf("receive from server: %w", err)
	}
	switch m := msg.(type) {
	case *pgproto3.ErrorResponse:
		return nil, fmt.Errorf("server error: %w", pgconn.ErrorResponseToPgError(m))
	case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		return s.receive()
	}
	return msg, nil
}

// resultSet reads one result set (RowDescription, DataRows, CommandComplete).
func (s *baseBackupStream) resultSet() ([][]*string, error) {
	var rows [][]*string
	for {
		msg, err := s.receive()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
		case *pgproto3.DataRow:
			row := make([]*string, len(m.Values))
			for i, v := range m.Values {
				if v != nil {
					str := string(v)
					row[i] = &str
				}
			}
			rows = append(rows, row)
		case *pgproto3.CommandComplete:
			return rows, nil
		default:
			return nil, fmt.Errorf("unexpected %T in result set", msg)
		}
	}
}

// nextArchive moves to the next archive. It returns the archive name and the tablespace
// path ("" for the data directory), or manifest=true for the backup manifest, or io.EOF at
// the end of the COPY stream.
func (s *baseBackupStream) nextArchive() (name, tsPath string, manifest bool, err error) {
	for {
		var data []byte
		if s.pending != nil {
			data, s.pending = s.pending, nil
		} else {
			if s.done {
				return "", "", false, io.EOF
			}
			msg, err := s.receive()
			if err != nil {
				return "", "", false, err
			}
			switch m := msg.(type) {
			case *pgproto3.CopyData:
				data = append([]byte(nil), m.Data...)
			case *pgproto3.CopyDone:
				s.done = true
				return "", "", false, io.EOF
			default:
				return "", "", false, fmt.Errorf("unexpected %T in backup stream", msg)
			}
		}
		if len(data) == 0 {
			return "", "", false, errors.New("empty message in backup stream")
		}
		switch data[0] {
		case 'n':
			parts := strings.SplitN(string(data[1:]), "\x00", 3)
			if len(parts) < 2 {
				return "", "", false, errors.New("malformed new-archive message")
			}
			s.inData = true
			return parts[0], parts[1], false, nil
		case 'm':
			s.inData = true
			return "", "", true, nil
		case 'p':
			s.noteProgress(data)
		case 'd':
			return "", "", false, errors.New("archive data before an archive started")
		default:
			return "", "", false, fmt.Errorf("unknown backup stream message %q", data[0])
		}
	}
}

func (s *baseBackupStream) noteProgress(data []byte) {
	if len(data) >= 9 {
		s.progress = int64(binary.BigEndian.Uint64(data[1:9]))
		if s.onProgress != nil {
			s.onProgress(s.progress)
		}
	}
}

// Read returns the current archive's bytes; io.EOF at its end. The slice handed to the
// caller's buffer is copied out of the connection's buffer.
type archiveReader struct {
	s   *baseBackupStream
	buf []byte // rest of the current 'd' message
}

func (a *archiveReader) Read(p []byte) (int, error) {
	for len(a.buf) == 0 {
		if !a.s.inData {
			return 0, io.EOF
		}
		msg, err := a.s.receive()
		if err != nil {
			return 0, err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				return 0, errors.New("empty message in backup stream")
			}
			switch m.Data[0] {
			case 'd':
				// m.Data is valid until the next receive: it is consumed before that.
				a.buf = m.Data[1:]
			case 'p':
				a.s.noteProgress(m.Data)
			default:
				a.s.pending = append([]byte(nil), m.Data...)
				a.s.inData = false
				return 0, io.EOF
			}
		case *pgproto3.CopyDone:
			a.s.done = true
			a.s.inData = false
			return 0, io.EOF
		default:
			return 0, fmt.Errorf("unexpected %T in backup stream", msg)
		}
	}
	n := copy(p, a.buf)
	a.buf = a.buf[n:]
	return n, nil
}

// finish reads the final result set with the stop position.
func (s *baseBackupStream) finish() (stopLSN string, stopTLI uint32, err error) {
	for !s.done {
		if _, _, _, err := s.nextArchive(); err != nil && !errors.Is(err, io.EOF) {
			return "", 0, err
		} else if errors.Is(err, io.EOF) {
			break
		}
		if _, err := io.Copy(io.Discard, &archiveReader{s: s}); err != nil {
			return "", 0, err
		}
	}
	rows, err := s.resultSet()
	if err != nil {
		return "", 0, fmt.Errorf("BASE_BACKUP end: %w", err)
	}
	if len(rows) != 1 || len(rows[0]) < 2 || rows[0][0] == nil || rows[0][1] == nil {
		return "", 0, fmt.Errorf("BASE_BACKUP end: unexpected reply %v", rows)
	}
	tli, err := strconv.ParseUint(*rows[0][1], 10, 32)
	if err != nil {
		return "", 0, fmt.Errorf("BASE_BACKUP end timeline: %w", err)
	}
	// CommandComplete for BASE_BACKUP, then ReadyForQuery.
	for {
		msg, err := s.receive()
		if err != nil {
			return "", 0, err
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	return *rows[0][0], uint32(tli), nil
}
