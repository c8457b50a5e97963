package repo

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// spillLimit is how much of an object PutStreamed keeps in memory before it moves the
// object to a temporary file: a manifest lists every extent of every file, so that of a
// cluster of terabytes takes gigabytes.
const spillLimit = 4 << 20

// spill holds what is written to it in memory up to limit bytes, then in an unlinked
// temporary file (in os.TempDir, that is $TMPDIR), which it reads back from for the upload:
// seekable either way, so that a failed upload can be retried. When no temporary file can
// be made (a read-only or full /tmp) it stays in memory, as objects always were before.
type spill struct {
	limit int
	mem   bytes.Buffer
	f     *os.File
	n     int64
}

func (s *spill) Write(p []byte) (int, error) {
	if s.f == nil && s.mem.Len()+len(p) > s.limit {
		if f, err := os.CreateTemp("", "pgharbor-object-*"); err == nil {
			os.Remove(f.Name()) // gone with the last descriptor, whatever ends the process
			if _, err := f.Write(s.mem.Bytes()); err != nil {
				f.Close()
				return 0, fmt.Errorf("temporary file: %w", err)
			}
			s.f = f
			s.mem = bytes.Buffer{}
		}
	}
	var n int
	var err error
	if s.f != nil {
		n, err = s.f.Write(p)
		if err != nil {
			err = fmt.Errorf("temporary file: %w", err)
		}
	} else {
		n, err = s.mem.Write(p)
	}
	s.n += int64(n)
	return n, err
}

// reader returns what was written, from its start.
func (s *spill) reader() io.Reader {
	if s.f != nil {
		return io.NewSectionReader(s.f, 0, s.n)
	}
	return bytes.NewReader(s.mem.Bytes())
}

// onDisk reports whether the object went to a temporary file.
func (s *spill) onDisk() bool { return s.f != nil }

func (s *spill) Close() error {
	if s.f != nil {
		return s.f.Close()
	}
	return nil
}
