package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
)

// ManifestFormat is the version of the manifest layout this pgharbor writes. Format 2 added
// Extent.PageTree: a pgharbor that reads only format 1 would take those digests for damage,
// so it refuses the manifest instead.
const ManifestFormat = 2

// oldestManifestFormat is the oldest layout this pgharbor still reads.
const oldestManifestFormat = 1

// ReadableFormat reports whether this pgharbor reads manifests of format f.
func ReadableFormat(f int) bool { return f >= oldestManifestFormat && f <= ManifestFormat }

// Object names inside a backup's prefix.
const (
	manifestName   = "manifest"
	summaryName    = "summary"
	pgManifestName = "backup_manifest"
	dataDir        = "data"
)

// BackupPrefix is the key prefix of a backup.
func BackupPrefix(r *repo.Repo, label string) string { return r.Key("backups", label) }

// BundleKey names bundle n of a backup.
func BundleKey(r *repo.Repo, label string, n int) string {
	return path.Join(BackupPrefix(r, label), dataDir, fmt.Sprintf("%08d", n))
}

// Summary is what listings, retention and the restore planner need to know of a backup.
type Summary struct {
	Format int    `json:"format"`
	Label  string `json:"label"`
	// Type is full, diff or incr (see BackupType*). A diff or incr backup stores only the
	// chunks that changed since Parent; its manifest still lists every file and every
	// extent, the unchanged ones pointing into the bundles of the backups in References.
	Type string `json:"type"`
	// Parent is the backup a diff or incr backup was compared with.
	Parent string `json:"parent,omitempty"`
	// References lists, oldest first, every other backup whose bundles this backup's extents
	// point into: they must stay while this backup does.
	References []string `json:"references,omitempty"`
	// Method is how the files were read: stream (BASE_BACKUP) or local (the data directory).
	Method           string    `json:"method,omitempty"`
	SystemIdentifier string    `json:"system_identifier"`
	PGVersion        int       `json:"pg_version"`
	WALSegmentSize   int64     `json:"wal_segment_size"`
	Timeline         uint32    `json:"timeline"`
	StartLSN         string    `json:"start_lsn"`
	StopLSN          string    `json:"stop_lsn"`
	StopTimeline     uint32    `json:"stop_timeline"`
	StartTime        time.Time `json:"start_time"`
	StopTime         time.Time `json:"stop_time"`
	// StopNextXID is the next transaction id to be assigned when the backup ended: a
	// transaction with this id or later committed after the backup's consistency point.
	StopNextXID uint64 `json:"stop_next_xid"`
	// Size is the sum of the files' sizes; StoredSize the sum of this backup's own sealed
	// objects (bundles and backup_manifest). Reused is the bytes of files this backup takes
	// from the backups in References instead of storing them again.
	Size       int64 `json:"size"`
	StoredSize int64 `json:"stored_size"`
	Reused     int64 `json:"reused,omitempty"`
	Files      int   `json:"files"`
	Bundles    int   `json:"bundles"`
	// BundlesUncompressed counts bundles kept without compression (samples did not shrink).
	BundlesUncompressed int `json:"bundles_uncompressed,omitempty"`
	// BundlesDense counts bundles compressed at the dense level (samples kept more than
	// half their size).
	BundlesDense int `json:"bundles_dense,omitempty"`
	// ChecksumFailures counts data pages whose checksum failed in a local backup of a cluster
	// with data checksums (File.PageErrors says where). The backup holds them as read.
	ChecksumFailures int    `json:"checksum_failures,omitempty"`
	Encryption       string `json:"encryption"`
	// Tablespaces maps OID to the location the tablespace had on the server.
	Tablespaces []Tablespace `json:"tablespaces,omitempty"`
	// Databases are the cluster's databases when the backup ended: restore --db-include
	// selects them by name. Absent in backups taken before it was recorded.
	Databases []Database `json:"databases,omitempty"`
	Duration  float64    `json:"duration_seconds"`
	// From is where the backup was read: FromPrimary or FromStandby (empty in manifests
	// written before backups from a standby existed: the primary).
	From string `json:"from,omitempty"`
	// Annotations are the user's key=value notes given when the backup was taken
	// (backup --annotation), shown by info.
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Database is one database of the backed-up cluster: its directory is base/<OID> (and
// <version dir>/<OID> in each tablespace).
type Database struct {
	OID  uint32 `json:"oid"`
	Name string `json:"name"`
}

// Tablespace is one tablespace of the backed-up cluster.
type Tablespace struct {
	OID      uint32 `json:"oid"`
	Location string `json:"location"`
}

// Extent is a piece of a file stored in one bundle.
type Extent struct {
	// Backup is the label of the backup whose bundle holds the piece; empty means the
	// backup of this manifest. It always names the backup that stored the bytes, never an
	// intermediate one, so a restore reads each piece from where it is without walking a
	// chain.
	Backup string `json:"k,omitempty"`
	Bundle int    `json:"b"`
	Offset int64  `json:"o"` // offset in the bundle's decoded bytes
	Length int64  `json:"l"`
	CRC    uint32 `json:"c"` // CRC-32C of the piece: detects damage in transit or at rest
	// SHA256 of the piece. A delta restore keeps a file only when every piece of it hashes
	// the same: a CRC cannot prove two files equal (a file that ends with its own CRC, such
	// as pg_control, has a constant whole-file CRC). Zero in manifests written before it.
	SHA256 Digest `json:"h,omitzero"`
	// PageTree says SHA256 is not the SHA-256 of the piece's bytes but of its pages' SHA-256s,
	// in order (PieceDigest), and Pages the keyed hashes of those page digests (pageHasher):
	// one pass of SHA-256 over a relation file's bytes gives both. Set (format 2 on) on
	// extents of whole pages of relation files; absent in older manifests and for an extent
	// taken from a parent without reading it, which keep their plain SHA-256.
	PageTree bool `json:"t,omitempty"`
	// Pages, for a piece of a relation file made of whole pages, holds a PageHashSize-byte
	// keyed hash of each of its pages (see pageHasher). The next diff or incr backup compares
	// a changed chunk page by page with it and stores only the pages that differ. Absent in
	// manifests written before page-level incrementals and for other files: such a chunk is
	// compared and stored whole.
	Pages []byte `json:"p,omitempty"`
}

// Digest is a SHA-256, written in manifests as hex.
type Digest [sha256.Size]byte

// IsZero reports whether d was never set.
func (d Digest) IsZero() bool { return d == Digest{} }

// MarshalText implements encoding.TextMarshaler.
func (d Digest) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(d[:])), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Digest) UnmarshalText(b []byte) error {
	if len(b) != 2*sha256.Size {
		return fmt.Errorf("SHA-256 %q: want %d hex digits", b, 2*sha256.Size)
	}
	_, err := hex.Decode(d[:], b)
	return err
}

// File is one entry of the backup: a regular file, a directory or a symlink.
type File struct {
	// Tablespace is 0 for the data directory, otherwise the tablespace OID; Path is relative
	// to the data directory or to the tablespace's location.
	Tablespace uint32      `json:"ts,omitempty"`
	Path       string      `json:"path"`
	Type       string      `json:"type"` // file, dir, symlink
	Mode       fs.FileMode `json:"mode"`
	Size       int64       `json:"size,omitempty"`
	ModTime    time.Time   `json:"mtime"`
	Link       string      `json:"link,omitempty"`
	CRC        uint32      `json:"crc,omitempty"` // CRC-32C of the whole file (PostgreSQL's manifest algorithm)
	// PageErrors lists the blocks whose page checksum failed when a local backup read them.
	PageErrors []uint32 `json:"page_errors,omitempty"`
	// Chunk, when set, says the file was cut into extents at every multiple of Chunk bytes
	// (one extent per chunk): the next incremental compares the file chunk by chunk. Zero in
	// manifests written before incremental backups: such a file is stored whole next time.
	Chunk   int64    `json:"chunk,omitempty"`
	Extents []Extent `json:"extents,omitempty"`
}

// Owner is the label of the backup whose bundle holds e, for a manifest of backup label.
func (e Extent) Owner(label string) string {
	if e.Backup == "" {
		return label
	}
	return e.Backup
}

// Manifest is the full description of a backup.
type Manifest struct {
	Summary
	// PageKey keys the page hashes of the extents (Extent.Pages). A full backup draws it at
	// random; its diff and incr backups inherit it, so their page hashes compare. Absent in
	// manifests written before page-level incrementals.
	PageKey  []byte `json:"page_key,omitempty"`
	FileList []File `json:"file_list"`
}

// ManifestPath is the path of a file as PostgreSQL's backup_manifest names it.
func (f File) ManifestPath(ts []Tablespace) string {
	if f.Tablespace == 0 {
		return f.Path
	}
	return path.Join("pg_tblspc", fmt.Sprint(f.Tablespace), f.Path)
}

// ReadManifest reads a complete backup's manifest.
func ReadManifest(ctx context.Context, r *repo.Repo, label string) (*Manifest, error) {
	return readManifest(ctx, r, label, true)
}

// ReadManifestWithoutPageHashes reads a complete backup's manifest without the extents' page
// hashes (Extent.Pages), in less than half the memory. A reader that keeps every extent for
// long (restore, verify) takes ReadManifestPieces instead.
func ReadManifestWithoutPageHashes(ctx context.Context, r *repo.Repo, label string) (*Manifest, error) {
	return readManifest(ctx, r, label, false)
}

func readManifest(ctx context.Context, r *repo.Repo, label string, keepPages bool) (*Manifest, error) {
	return readManifestFiles(ctx, r, label, keepPages, nil)
}

// readManifestFiles reads a complete backup's manifest. With each, it passes each file to each
// as it is decoded instead of listing it in FileList; each must not keep f. What each made of
// the files is valid only if readManifestFiles returns no error: the object's tag or signature
// is checked at its end.
func readManifestFiles(ctx context.Context, r *repo.Repo, label string, keepPages bool, each func(f *File) error) (*Manifest, error) {
	var m *Manifest
	err := r.GetStreamed(ctx, path.Join(BackupPrefix(r, label), manifestName), func(rd io.Reader) error {
		var err error
		m, err = decodeManifestFiles(rd, keepPages, each)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("backup %s: read manifest: %w", label, err)
	}
	if !ReadableFormat(m.Format) {
		return nil, fmt.Errorf("backup %s: manifest format %d, this pgharbor reads %d to %d (a newer pgharbor wrote it?)", label, m.Format, oldestManifestFormat, ManifestFormat)
	}
	return m, nil
}

// ReadPGManifest returns PostgreSQL's own backup_manifest of a backup.
func ReadPGManifest(ctx context.Context, r *repo.Repo, label string) ([]byte, error) {
	return r.GetBytes(ctx, path.Join(BackupPrefix(r, label), pgManifestName))
}

// writeManifestTo stores m as its backup's manifest.
func writeManifestTo(ctx context.Context, r *repo.Repo, m *Manifest) error {
	return r.PutStreamed(ctx, path.Join(BackupPrefix(r, m.Label), manifestName), true, func(w io.Writer) error {
		return encodeManifest(w, m)
	})
}

// writeManifestEntries stores m, whose FileList is ignored, as its backup's manifest with
// files, the JSON list of its file entries (fileEntries.entries), in the list's place.
func writeManifestEntries(ctx context.Context, r *repo.Repo, m *Manifest, files io.Reader) error {
	s, err := sealManifestEntries(r, m, files)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Put(ctx, true)
}

// sealManifestEntries is writeManifestEntries up to the upload: the manifest, sealed and
// held, for the caller to store when the backup may exist.
func sealManifestEntries(r *repo.Repo, m *Manifest, files io.Reader) (*repo.Sealed, error) {
	return r.SealStreamed(path.Join(BackupPrefix(r, m.Label), manifestName), func(w io.Writer) error {
		head, err := manifestHead(m)
		if err != nil {
			return err
		}
		if _, err := w.Write(head); err != nil {
			return err
		}
		if _, err := io.Copy(w, files); err != nil {
			return err
		}
		_, err = w.Write([]byte{'}'})
		return err
	})
}

// A manifest holds an entry for every extent of every file: about 300 bytes of JSON per
// 128 KiB of relation files. encodeManifest and decodeManifest take it one file at a time, so
// that its JSON never exists whole in memory; what they write and read is what json.Marshal
// and json.Unmarshal make of a Manifest.

// fileListTail is how json.Marshal ends a Manifest without files.
const fileListTail = `"file_list":null}`

// manifestHead is the start of what json.Marshal makes of m, up to its file list's value:
// file_list is a manifest's last field.
func manifestHead(m *Manifest) ([]byte, error) {
	head := *m
	head.FileList = nil
	b, err := json.Marshal(&head)
	if err != nil {
		return nil, err
	}
	if !bytes.HasSuffix(b, []byte(fileListTail)) {
		return nil, errors.New("encode manifest: file_list is not its last field")
	}
	return b[:len(b)-len(fileListTail)+len(`"file_list":`)], nil
}

// encodeManifest writes m to w as json.Marshal would.
func encodeManifest(w io.Writer, m *Manifest) error {
	b, err := manifestHead(m)
	if err != nil {
		return err
	}
	if m.FileList == nil {
		_, err := w.Write(append(b, "null}"...))
		return err
	}
	ew := entryWriter{w: w, buf: append(b, '[')}
	for i := range m.FileList {
		if err := ew.write(&m.FileList[i]); err != nil {
			return err
		}
	}
	ew.buf = append(ew.buf, "]}"...)
	return ew.flush()
}

// decodeManifest reads one manifest from rd as json.Unmarshal would, its files one at a time;
// without keepPages it leaves out the extents' page hashes (Extent.Pages), which only the
// next incremental backup compares, and which are over half of what an extent holds.
func decodeManifest(rd io.Reader, keepPages bool) (*Manifest, error) {
	return decodeManifestFiles(rd, keepPages, nil)
}

// decodeManifestFiles is decodeManifest; with each, it passes each file to each instead of
// listing it.
func decodeManifestFiles(rd io.Reader, keepPages bool, each func(*File) error) (*Manifest, error) {
	dec := json.NewDecoder(rd)
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	var files []File
	head := []byte{'{'}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := t.(string)
		// encoding/json matches field names without regard to case.
		if !strings.EqualFold(key, "file_list") {
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				return nil, err
			}
			if len(head) > 1 {
				head = append(head, ',')
			}
			kb, _ := json.Marshal(key)
			head = append(append(append(head, kb...), ':'), v...)
			continue
		}
		if t, err = dec.Token(); err != nil {
			return nil, err
		}
		if t == nil { // null
			files = nil
			continue
		}
		if t != json.Delim('[') {
			return nil, fmt.Errorf("decode manifest: file_list is %v, not a list", t)
		}
		files = []File{}
		var one File
		labels := map[string]string{}
		for dec.More() {
			f := &one
			if each == nil {
				files = append(files, File{})
				f = &files[len(files)-1]
			} else {
				one = File{}
			}
			if err := dec.Decode(f); err != nil {
				return nil, err
			}
			if !keepPages {
				for i := range f.Extents {
					f.Extents[i].Pages = nil
				}
			}
			if each != nil {
				if err := each(f); err != nil {
					return nil, err
				}
				continue
			}
			// An incremental's extents name the backups holding them, a few labels over
			// and over: one string each, not one per extent, in a list kept for a restore.
			for i := range f.Extents {
				if l := f.Extents[i].Backup; l != "" {
					if held, ok := labels[l]; ok {
						f.Extents[i].Backup = held
					} else {
						labels[l] = l
					}
				}
			}
			if n := len(f.Extents); cap(f.Extents)-n > n/8 {
				// The decoder grows the list as append does; a large file's list is kept
				// for the whole restore, so not with up to a quarter of it unused.
				f.Extents = slices.Clone(f.Extents)
			}
		}
		if err := expectDelim(dec, ']'); err != nil {
			return nil, err
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("decode manifest: data after the manifest")
	}
	var m Manifest
	if err := json.Unmarshal(append(head, '}'), &m); err != nil {
		return nil, err
	}
	m.FileList = files
	return &m, nil
}

func expectDelim(dec *json.Decoder, d json.Delim) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t != d {
		return fmt.Errorf("decode manifest: found %v where %v belongs", t, d)
	}
	return nil
}
