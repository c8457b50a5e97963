package failover

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/pool/cluster"
	"github.com/pgharbor/pgharbor/wal"
)

func TestStepHealthTransitions(t *testing.T) {
	H, S, F := Healthy, Suspect, Failed
	tests := []struct {
		name    string
		retries int
		seq     []Outcome
		want    []HealthState
	}{
		{"ok stays healthy", 2, []Outcome{CheckOK, CheckOK}, []HealthState{H, H}},
		{"errors fail after retries+1", 2, []Outcome{CheckError, CheckError, CheckError}, []HealthState{S, S, F}},
		{"an ok in between resets the count", 1, []Outcome{CheckError, CheckOK, CheckError, CheckError}, []HealthState{S, H, S, F}},
		{"zero retries: a refused connection fails at once", 0, []Outcome{CheckError}, []HealthState{F}},
		{"zero retries: a single slow answer never fails", 0, []Outcome{CheckTimeout, CheckOK, CheckTimeout, CheckOK}, []HealthState{S, H, S, H}},
		{"zero retries: two timeouts in a row fail", 0, []Outcome{CheckTimeout, CheckTimeout}, []HealthState{S, F}},
		{"timeouts count like errors beyond the first", 2, []Outcome{CheckTimeout, CheckError, CheckTimeout}, []HealthState{S, S, F}},
		{"failed is absorbing", 0, []Outcome{CheckError, CheckOK, CheckTimeout}, []HealthState{F, F, F}},
		{"negative retries mean none", -3, []Outcome{CheckError}, []HealthState{F}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Health
			for i, o := range tc.seq {
				h = Step(h, o, tc.retries)
				if h.State != tc.want[i] {
					t.Fatalf("after %v (step %d): state %v, want %v", tc.seq[:i+1], i, h.State, tc.want[i])
				}
			}
		})
	}
}

func TestElect(t *testing.T) {
	c := func(id int, name string, lsn uint64, mods ...func(*Candidate)) Candidate {
		x := Candidate{ID: id, Name: name, Up: true, ReceiveLSN: walLSN(lsn), ReplayLSN: walLSN(lsn)}
		for _, m := range mods {
			m(&x)
		}
		return x
	}
	down := func(x *Candidate) { x.Up = false }
	noFO := func(x *Candidate) { x.NoFailover = true }
	sync := func(x *Candidate) { x.WasSync = true }
	prio := func(p int) func(*Candidate) { return func(x *Candidate) { x.Priority = p } }
	recv := func(l uint64) func(*Candidate) { return func(x *Candidate) { x.ReceiveLSN = walLSN(l) } }

	tests := []struct {
		name  string
		cands []Candidate
		opt   ElectOptions
		want  string // "" = ErrNoCandidate
	}{
		{"most advanced wins", []Candidate{c(1, "a", 100), c(2, "b", 200)}, ElectOptions{}, "b"},
		{"received WAL counts, not only replayed", []Candidate{c(1, "a", 100, recv(300)), c(2, "b", 200)}, ElectOptions{}, "a"},
		{"priority breaks a tie", []Candidate{c(1, "a", 100), c(2, "b", 100, prio(5))}, ElectOptions{}, "b"},
		{"name breaks a tie", []Candidate{c(2, "b", 100), c(1, "a", 100)}, ElectOptions{}, "a"},
		{"priority does not beat position", []Candidate{c(1, "a", 200), c(2, "b", 100, prio(9))}, ElectOptions{}, "a"},
		{"down node never wins", []Candidate{c(1, "a", 900, down), c(2, "b", 100)}, ElectOptions{}, "b"},
		{"no_failover never wins", []Candidate{c(1, "a", 900, noFO), c(2, "b", 100)}, ElectOptions{}, "b"},
		{"only no_failover left: none", []Candidate{c(1, "a", 900, noFO), c(2, "b", 100, down)}, ElectOptions{}, ""},
		{"sync required: async not chosen though ahead", []Candidate{c(1, "a", 900), c(2, "b", 100, sync)}, ElectOptions{RequireSync: true}, "b"},
		{"sync required, none in sync: none", []Candidate{c(1, "a", 900), c(2, "b", 100)}, ElectOptions{RequireSync: true}, ""},
		{"lag over the limit excluded when a better one exists", []Candidate{c(1, "a", 1000), c(2, "b", 100, prio(9))}, ElectOptions{MaxLagBytes: 500}, "a"},
		{"lag measured from the failed primary's last LSN", []Candidate{c(1, "a", 1000)}, ElectOptions{MaxLagBytes: 500, PrimaryLSN: walLSN(2000)}, ""},
		{"lag within limit", []Candidate{c(1, "a", 1000)}, ElectOptions{MaxLagBytes: 500, PrimaryLSN: walLSN(1400)}, "a"},
		{"no candidates", nil, ElectOptions{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, why, err := Elect(tc.cands, tc.opt)
			if tc.want == "" {
				if !errors.Is(err, ErrNoCandidate) {
					t.Fatalf("got %q, err %v; want ErrNoCandidate", w.Name, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if w.Name != tc.want {
				t.Fatalf("winner %q, want %q (passed over: %v)", w.Name, tc.want, why)
			}
			for _, x := range tc.cands {
				if x.Name != w.Name && why[x.Name] == "" {
					t.Errorf("no reason recorded for passing over %q", x.Name)
				}
			}
		})
	}
}

func TestNoFailoverNodeNeverPromotedWhateverItsPosition(t *testing.T) {
	for lsn := uint64(0); lsn < 5; lsn++ {
		cands := []Candidate{
			{ID: 0, Name: "keep", Up: true, NoFailover: true, Priority: 100, ReceiveLSN: walLSN(1 << 40), WasSync: true},
			{ID: 1, Name: "other", Up: true, ReceiveLSN: walLSN(lsn), WasSync: true},
		}
		w, _, err := Elect(cands, ElectOptions{RequireSync: true})
		if err != nil || w.Name != "other" {
			t.Fatalf("lsn %d: winner %q err %v", lsn, w.Name, err)
		}
	}
}

func TestPlaceholdersExpand(t *testing.T) {
	p := Placeholders{
		Failed:     NodeInfo{ID: 0, Host: "db0", Port: 5432, DataDir: "/d0"},
		NewPrimary: NodeInfo{ID: 2, Host: "db2", Port: 5434, DataDir: "/d2"},
		OldPrimary: NodeInfo{ID: 0, Host: "db0", Port: 5432},
	}
	got := p.Expand("f %d %h %p %D new %m %H %r %R old %M %P %N %S pct %% keep %x end%")
	want := `f 0 db0 5432 /d0 new 2 db2 5434 /d2 old 0 0 db0 5432 pct % keep %x end%`
	if got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	empty := Placeholders{Failed: NodeInfo{ID: -1}, NewPrimary: NodeInfo{ID: -1}, OldPrimary: NodeInfo{ID: -1}}
	if got := empty.Expand("%d %D %r"); got != `"" "" ""` {
		t.Fatalf("unknown values: %q", got)
	}
}

func TestConfigRejectsUnknownNodeNames(t *testing.T) {
	nodes := []cluster.NodeConfig{{Host: "h", Port: 1, Name: "a"}, {Host: "h", Port: 2, Name: "b"}}
	_, err := New(Config{Nodes: map[string]NodeOptions{"c": {NoFailover: true}}}, nodes, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "c") {
		t.Fatalf("want an error naming c, got %v", err)
	}
	m, err := New(Config{Nodes: map[string]NodeOptions{"b": {Priority: 3}}}, nodes, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.nodes[1].Opts.Priority != 3 || m.cfg.Retries != DefaultRetries || m.cfg.HealthCheckPeriod != DefaultHealthCheckPeriod {
		t.Fatalf("options/defaults not applied: %+v %+v", m.nodes[1], m.cfg)
	}
	if _, err := New(Config{}, nodes[:1], nil, nil); err == nil {
		t.Fatal("one node accepted")
	}
}

func walLSN(v uint64) wal.LSN { return wal.LSN(v) }
