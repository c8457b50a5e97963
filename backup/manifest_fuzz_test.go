package backup

import (
	"bytes"
	"encoding/json"
	"testing"
)

// The seeds in testdata/fuzz are the manifest (trimmed to a few dozen entries) and summary
// objects of real backups of a PostgreSQL 15 cluster with a tablespace, taken with
// --method local and --method stream and read back with `pgharbor repo get`.

// FuzzManifest decodes manifests as every reader does (ReadManifest, restore, verify) and
// checks that what decodes is written back the same: `expire` and `backup pin` rewrite
// objects next to manifests, and a manifest that changed on a decode/encode cycle would mean
// a field the readers do not understand as the writer meant it.
func FuzzManifest(f *testing.F) {
	f.Add([]byte(`{"format":1,"label":"l","file_list":[{"path":"a","type":"file","mode":384,"size":1,"mtime":"2026-01-01T00:00:00Z","extents":[{"b":0,"o":0,"l":1,"c":1,"h":"` + string(bytes.Repeat([]byte("ab"), 32)) + `"}]}]}`))
	f.Add([]byte(`{"format":1,"file_list":[{"path":"a","type":"file","extents":[{"h":"zz"}]}]}`))
	f.Add([]byte(`{"format":1,"label":"l","page_key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","file_list":[{"path":"base/5/1","type":"file","mode":384,"size":16384,"mtime":"2026-01-01T00:00:00Z","chunk":131072,"extents":[{"k":"20261204T000000Z","b":0,"o":8192,"l":8192,"c":1,"p":"AQIDBAUGBwg="},{"b":3,"o":0,"l":8192,"c":2,"p":"CQoLDA0ODxA="}]}]}`))
	f.Add([]byte(`{"format":1,"file_list":[{"path":"a","type":"file","extents":[{"p":"not base64"}]}]}`))
	f.Add([]byte(`{"format":2,"label":"l","file_list":[{"path":"base/5/1","type":"file","mode":384,"size":8192,"mtime":"2026-01-01T00:00:00Z","chunk":131072,"extents":[{"b":0,"o":0,"l":8192,"c":2,"t":true,"p":"CQoLDA0ODxA="}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Manifest
		uerr := json.Unmarshal(data, &m)
		// ReadManifest decodes file by file (decodeManifest): it must accept what
		// json.Unmarshal accepts, refuse what it refuses, and read the same manifest.
		sm, serr := decodeManifest(bytes.NewReader(data), true)
		if (uerr == nil) != (serr == nil) {
			t.Fatalf("json.Unmarshal: %v; decodeManifest: %v", uerr, serr)
		}
		lean, lerr := decodeManifest(bytes.NewReader(data), false)
		if (lerr == nil) != (serr == nil) {
			t.Fatalf("decodeManifest with page hashes: %v; without: %v", serr, lerr)
		}
		if uerr != nil {
			return
		}
		want, _ := json.Marshal(&m)
		if got, _ := json.Marshal(sm); !bytes.Equal(got, want) {
			t.Fatalf("decodeManifest read\n%s\njson.Unmarshal read\n%s", got, want)
		}
		// Without page hashes: the same manifest, less every extent's Pages.
		var noPages Manifest
		json.Unmarshal(data, &noPages)
		for i := range noPages.FileList {
			for j := range noPages.FileList[i].Extents {
				noPages.FileList[i].Extents[j].Pages = nil
			}
		}
		wantLean, _ := json.Marshal(&noPages)
		if got, _ := json.Marshal(lean); !bytes.Equal(got, wantLean) {
			t.Fatalf("decodeManifest without page hashes read\n%s\nwant\n%s", got, wantLean)
		}
		var enc bytes.Buffer
		if err := encodeManifest(&enc, &m); err != nil || !bytes.Equal(enc.Bytes(), want) {
			t.Fatalf("encodeManifest wrote\n%s\njson.Marshal writes\n%s (%v)", enc.Bytes(), want, err)
		}
		roundTrip(t, &m, new(Manifest))
		for _, fl := range m.FileList {
			if fl.Tablespace != 0 && fl.ManifestPath(m.Tablespaces) == fl.Path {
				t.Fatalf("tablespace entry %q named as a data directory entry", fl.Path)
			}
		}
	})
}

// FuzzSummary does the same for backup summaries (what listings, retention and the restore
// planner read).
func FuzzSummary(f *testing.F) {
	f.Add([]byte(`{"format":1,"label":"l","start_time":"2026-12-04T08:38:55.379451525+09:00","tablespaces":[{"oid":1,"location":"/x"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Summary
		if json.Unmarshal(data, &s) != nil {
			return
		}
		roundTrip(t, &s, new(Summary))
	})
}

// roundTrip checks that v encodes, decodes into fresh, and encodes to the same bytes again.
func roundTrip[T any](t *testing.T, v *T, fresh *T) {
	t.Helper()
	b1, err := json.Marshal(v)
	if err != nil {
		// Decoding accepted a value that cannot be written (e.g. a year past 9999): a
		// reader must not hold what no writer could have produced.
		t.Fatalf("decoded value does not encode: %v", err)
	}
	if err := json.Unmarshal(b1, fresh); err != nil {
		t.Fatalf("encoded value does not decode: %v\n%s", err, b1)
	}
	b2, err := json.Marshal(fresh)
	if err != nil || !bytes.Equal(b1, b2) {
		t.Fatalf("not stable over decode/encode:\n%s\n%s (%v)", b1, b2, err)
	}
}
