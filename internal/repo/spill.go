package repo

import (
	"bytes"
	"io"
	"os"
)

// spillLimit is how much a Spill keeps in memory before it moves to a temporary file: a
// manifest lists every extent of every file, so that of a cluster of terabytes takes
// gigabytes.
const spillLimit = 4 << 20

// spillFile is what a spill keeps an object in beyond its limit: an *os.File.
type spillFile interface {
	io.Writer
	io.ReaderAt
	io.Closer
}

// tempSpillFile makes an unlinked temporary file in os.TempDir (that is, $TMPDIR).
func tempSpillFile() (spillFile, error) {
	f, err := os.CreateTemp("", "pgharbor-object-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name()) // gone with the last descriptor, whatever ends the process
	return f, nil
}

// Spill holds what is written to it in memory up to a limit, then in a temporary file, which
// it reads back from as often as asked: for an upload, seekable so that a failed one can be
// retried; for a backup, the manifest entries of the files it has read. When no temporary
// file can be made, or writing to it fails (a read-only or full /tmp), it keeps what it holds
// in memory, as objects always were before: a backup must not fail at its last step for want
// of scratch space.
type Spill struct {
	limit  int
	create func() (spillFile, error)
	mem    bytes.Buffer
	f      spillFile
	n      int64
}

// NewSpill returns an empty Spill that moves to a temporary file in $TMPDIR beyond limit
// bytes. Close it to let go of the file.
func NewSpill(limit int) *Spill { return &Spill{limit: limit, create: tempSpillFile} }

func (s *Spill) Write(p []byte) (int, error) {
	if s.f == nil && s.create != nil && s.mem.Len()+len(p) > s.limit {
		if f, err := s.create(); err == nil {
			if _, err := f.Write(s.mem.Bytes()); err != nil {
				f.Close()
			} else {
				s.f = f
				s.mem = bytes.Buffer{}
			}
		}
		s.create = nil // one attempt: if it failed, memory it is
	}
	if s.f != nil {
		if _, err := s.f.Write(p); err != nil {
			// Back to memory, with what the file holds so far.
			held, rerr := io.ReadAll(io.NewSectionReader(s.f, 0, s.n))
			s.f.Close()
			s.f = nil
			if rerr != nil {
				return 0, rerr
			}
			s.mem = *bytes.NewBuffer(held)
		} else {
			s.n += int64(len(p))
			return len(p), nil
		}
	}
	n, err := s.mem.Write(p)
	s.n += int64(n)
	return n, err
}

// Reader returns what was written, from its start.
func (s *Spill) Reader() io.Reader {
	if s.f != nil {
		return io.NewSectionReader(s.f, 0, s.n)
	}
	return bytes.NewReader(s.mem.Bytes())
}

// ReadAt reads what was written at off.
func (s *Spill) ReadAt(p []byte, off int64) (int, error) {
	if s.f != nil {
		return s.f.ReadAt(p, off)
	}
	return bytes.NewReader(s.mem.Bytes()).ReadAt(p, off)
}

// OnDisk reports whether what was written is in a temporary file.
func (s *Spill) OnDisk() bool { return s.f != nil }

// Size is the number of bytes written.
func (s *Spill) Size() int64 { return s.n }

func (s *Spill) Close() error {
	if s.f != nil {
		return s.f.Close()
	}
	return nil
}
