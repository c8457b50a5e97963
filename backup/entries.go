package backup

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"

	"github.com/pgharbor/pgharbor/internal/repo"
)

// spillInMemory is how much of the file entries, and of an incremental's parent's extents,
// a backup keeps in memory by default (Options.SpillInMemory) before it moves them to a
// temporary file: the bytes of small
// clusters' backups never touch the disk, and those of large ones do not add to the backup's
// peak memory, which the bundles in flight set.
const spillInMemory = 1 << 20

// fileEntries collects a backup's manifest entries as its files are read. An entry lists every
// extent of its file with the extent's SHA-256 and page hashes: about 300 bytes of JSON per
// 128 KiB of relation files, gigabytes for a cluster of terabytes. So an entry is written out
// (to a Spill: memory, then a temporary file) as soon as the sealers have hashed every bundle
// its file lies in, and only what the rest of the backup needs of it stays: the file without
// its extents. The manifest is assembled from the spill at the end.
type fileEntries struct {
	pending []File      // read, waiting for the sums of their extents, in the order read
	lean    []File      // every file read, without extents, in the order read
	json    *repo.Spill // entries written out, separated by commas, in the order read
	out     entryWriter // writes entries to json
	refs    map[string]bool
	spill   int // bytes json keeps in memory; 0: spillInMemory
}

// addFile records f, which the reader has finished, for the manifest, and writes out the
// entries of the files whose sums are all in. Only the producer calls it.
func (p *pipeline) addFile(f File) error {
	l := f
	l.Extents = nil
	p.files.lean = append(p.files.lean, l)
	p.files.pending = append(p.files.pending, f)
	return p.writeEntries(false)
}

// endFiles writes out the entries of the files still waiting, once the pipeline is closed and
// every sum is in, and returns what was collected. The caller closes its spill.
func (p *pipeline) endFiles() (*fileEntries, error) {
	if err := p.writeEntries(true); err != nil {
		return nil, err
	}
	p.sums = nil
	if p.files.json == nil {
		p.files.json = p.files.newSpill()
	}
	if err := p.files.out.flush(); err != nil {
		return nil, fmt.Errorf("manifest entries: %w", err)
	}
	p.files.out.buf = nil
	return &p.files, nil
}

// writeEntries writes out the entries of the files at the head of the queue whose extents'
// sums are all in (with all, of every file: the pipeline is closed), filling the sums in.
func (p *pipeline) writeEntries(all bool) error {
	fe := &p.files
	for len(fe.pending) > 0 {
		f := &fe.pending[0]
		// The sealers record sums under p.mu: it is held to take them, not while the
		// entry (megabytes for a 1 GB segment) is written.
		p.mu.Lock()
		if !all && !p.summed(f) {
			p.mu.Unlock()
			return nil
		}
		err := p.takeSums(f)
		p.mu.Unlock()
		if err != nil {
			return err
		}
		if err := fe.write(f); err != nil {
			return err
		}
		fe.pending[0] = File{}
		fe.pending = fe.pending[1:]
	}
	fe.pending = nil // start the queue afresh, not at the end of an array only growing
	return nil
}

// summed reports whether the sealers have hashed every extent of f that needs their sum.
func (p *pipeline) summed(f *File) bool {
	for _, e := range f.Extents {
		if e.Backup == "" && e.SHA256.IsZero() && p.sums[e.Bundle] == nil {
			return false
		}
	}
	return true
}

// takeSums fills in the digest of every extent of f the reader did not hash (and the page
// hashes of the paged ones), and forgets each bundle's sums once all are taken.
func (p *pipeline) takeSums(f *File) error {
	for j := range f.Extents {
		e := &f.Extents[j]
		if e.Backup != "" || !e.SHA256.IsZero() {
			continue // taken from an earlier backup, or hashed by the reader
		}
		bs := p.sums[e.Bundle]
		var k int
		ok := false
		if bs != nil {
			k, ok = slices.BinarySearch(bs.starts, e.Offset)
		}
		if !ok || bs.kinds[k] == extentKnown {
			return fmt.Errorf("no SHA-256 for %s at bundle %d offset %d", f.Path, e.Bundle, e.Offset)
		}
		d := bs.sums[k]
		e.SHA256 = d.digest
		if d.pages != nil {
			e.Pages, e.PageTree = d.pages, true
		}
		bs.sums[k] = extentSum{}
		if bs.left--; bs.left == 0 {
			delete(p.sums, e.Bundle)
		}
	}
	return nil
}

func (fe *fileEntries) newSpill() *repo.Spill {
	if fe.spill > 0 {
		return repo.NewSpill(fe.spill)
	}
	return repo.NewSpill(spillInMemory)
}

// write appends f's entry to the spill.
func (fe *fileEntries) write(f *File) error {
	if fe.json == nil {
		fe.json = fe.newSpill()
		fe.out.w = fe.json
		fe.refs = map[string]bool{}
	}
	for _, e := range f.Extents {
		if e.Backup != "" {
			fe.refs[e.Backup] = true
		}
	}
	return fe.out.write(f)
}

// entryWriter writes file entries to w, separated by commas, as json.Marshal makes them, and
// an extent at a time: the entry of a 1 GB segment is megabytes, which json.Marshal would
// build whole (and keep the buffer of in its pool). It writes through buf, every 64 KiB.
type entryWriter struct {
	w   io.Writer
	buf []byte
	n   int // entries written
}

func (ew *entryWriter) write(f *File) error {
	if ew.n > 0 {
		ew.buf = append(ew.buf, ',')
	}
	lean := *f
	lean.Extents = nil
	head, err := json.Marshal(&lean)
	if err != nil {
		return fmt.Errorf("manifest entry of %s: %w", f.Path, err)
	}
	if len(f.Extents) == 0 {
		ew.buf = append(ew.buf, head...)
	} else {
		// Extents is File's last field, left out when empty: the entry is the head without
		// its closing brace, then the list.
		ew.buf = append(append(ew.buf, head[:len(head)-1]...), `,"extents":[`...)
		for i := range f.Extents {
			eb, err := json.Marshal(&f.Extents[i])
			if err != nil {
				return fmt.Errorf("manifest entry of %s: %w", f.Path, err)
			}
			if i > 0 {
				ew.buf = append(ew.buf, ',')
			}
			if ew.buf = append(ew.buf, eb...); len(ew.buf) >= 64<<10 {
				if err := ew.flush(); err != nil {
					return fmt.Errorf("manifest entry of %s: %w", f.Path, err)
				}
			}
		}
		ew.buf = append(ew.buf, "]}"...)
	}
	ew.n++
	if len(ew.buf) >= 64<<10 {
		if err := ew.flush(); err != nil {
			return fmt.Errorf("manifest entry of %s: %w", f.Path, err)
		}
	}
	return nil
}

func (ew *entryWriter) flush() error {
	if _, err := ew.w.Write(ew.buf); err != nil {
		return err
	}
	ew.buf = ew.buf[:0]
	return nil
}

// references are the earlier backups whose bundles the entries name, sorted.
func (fe *fileEntries) references() []string {
	var out []string
	for l := range fe.refs {
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}

// entries returns the spilled entries as the JSON list they make.
func (fe *fileEntries) entries() io.Reader {
	return io.MultiReader(bytes.NewReader([]byte{'['}), fe.json.Reader(), bytes.NewReader([]byte{']'}))
}

// close lets go of the spill's temporary file, if it made one.
func (fe *fileEntries) close() {
	if fe.json != nil {
		fe.json.Close()
	}
}
