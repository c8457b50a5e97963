package restore

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/backup"
)

func TestExcludedDatabases(t *testing.T) {
	m := &backup.Manifest{Summary: backup.Summary{Label: "L", Databases: []backup.Database{{OID: 1, Name: "template1"}, {OID: 5, Name: "postgres"}, {OID: 16384, Name: "app"}, {OID: 16390, Name: "big"}}}}
	m.Summary.Tablespaces = []backup.Tablespace{{OID: 16400, Location: "/ts"}}
	for _, p := range []string{"base/1", "base/4", "base/5", "base/16384", "base/16390"} {
		m.FileList = append(m.FileList, backup.File{Path: p, Type: "dir"})
	}
	m.FileList = append(m.FileList, backup.File{Tablespace: 16400, Path: "PG_15_202209061/16390", Type: "dir"})
	for _, tc := range []struct {
		include []string
		want    []uint32
		err     string
	}{
		{include: nil, want: nil},
		{include: []string{"app"}, want: []uint32{16390}},
		{include: []string{"16390"}, want: []uint32{16384}},
		{include: []string{"app", "big"}, want: []uint32{}},
		{include: []string{"postgres"}, want: []uint32{16384, 16390}}, // built-in: no-op, the rest goes
		{include: []string{"nosuch"}, err: "has no such database (it has app, big, postgres, template1)"},
		{include: []string{"16500"}, err: "has no directory base/16500"},
	} {
		got, err := excludedDatabases(m, tc.include)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: %v, want %q", tc.include, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", tc.include, err)
		}
		keys := slices.Sorted(maps.Keys(got))
		if (tc.want == nil) != (got == nil) || !slices.Equal(keys, tc.want) {
			t.Errorf("%v: excluded %v, want %v", tc.include, keys, tc.want)
		}
	}
	old := &backup.Manifest{Summary: backup.Summary{Label: "OLD"}, FileList: m.FileList}
	if _, err := excludedDatabases(old, []string{"app"}); err == nil || !strings.Contains(err.Error(), "give the database's OID") {
		t.Errorf("name against a backup without a database list: %v", err)
	}
	if got, err := excludedDatabases(old, []string{"16384"}); err != nil || !got[16390] || got[16384] {
		t.Errorf("OID against a backup without a database list: %v %v", got, err)
	}
	x := &executor{excluded: map[uint32]bool{16390: true}}
	for _, tc := range []struct {
		f    backup.File
		want bool
	}{
		{backup.File{Path: "base/16390/16401", Type: "file"}, true},
		{backup.File{Path: "base/16390/16401.1", Type: "file"}, true},
		{backup.File{Path: "base/16390/16401_fsm", Type: "file"}, true},
		{backup.File{Path: "base/16390/PG_VERSION", Type: "file"}, false},
		{backup.File{Path: "base/16390/pg_filenode.map", Type: "file"}, false},
		{backup.File{Path: "base/16384/16401", Type: "file"}, false},
		{backup.File{Tablespace: 16400, Path: "PG_15_202209061/16390/16500", Type: "file"}, true},
		{backup.File{Path: "global/1262", Type: "file"}, false},
	} {
		if got := x.zeroed(tc.f); got != tc.want {
			t.Errorf("zeroed(%s in %d) = %v", tc.f.Path, tc.f.Tablespace, got)
		}
	}
}
