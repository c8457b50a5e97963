package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// buildPGManifest writes PostgreSQL's backup_manifest (version 1, as PostgreSQL 15 writes
// it) for a backup pgharbor read itself: every regular file with its size, modification
// time and CRC-32C, the WAL range, and the SHA-256 of everything before the checksum line.
// pg_verifybackup checks a restored directory against it.
func buildPGManifest(files []File, tli uint32, startLSN, stopLSN string) []byte {
	var b bytes.Buffer
	b.WriteString("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [")
	sep := "\n"
	for _, f := range files {
		if f.Type != "file" {
			continue
		}
		b.WriteString(sep)
		sep = ",\n"
		p := f.ManifestPath(nil)
		if utf8.ValidString(p) {
			b.WriteString(`{ "Path": `)
			b.Write(jsonString(p))
		} else {
			fmt.Fprintf(&b, `{ "Encoded-Path": "%s"`, hex.EncodeToString([]byte(p)))
		}
		var le [4]byte
		binary.LittleEndian.PutUint32(le[:], f.CRC)
		fmt.Fprintf(&b, `, "Size": %d, "Last-Modified": "%s", "Checksum-Algorithm": "CRC32C", "Checksum": "%s" }`,
			f.Size, f.ModTime.UTC().Format("2006-01-02 15:04:05 GMT"), hex.EncodeToString(le[:]))
	}
	b.WriteString("\n],\n\"WAL-Ranges\": [\n")
	fmt.Fprintf(&b, `{ "Timeline": %d, "Start-LSN": "%s", "End-LSN": "%s" }`, tli, startLSN, stopLSN)
	b.WriteString("\n],\n")
	sum := sha256.Sum256(b.Bytes())
	fmt.Fprintf(&b, "\"Manifest-Checksum\": \"%s\"}\n", hex.EncodeToString(sum[:]))
	return b.Bytes()
}

// jsonString quotes s as a JSON string without HTML escaping.
func jsonString(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}
