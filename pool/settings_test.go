package pool

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestParamsMatchFollowsEveryChange drives sessions and server connections through every
// way their settings change, in random order, and checks after each step that paramsMatch
// (which answers from what it remembers of the last match) says what walking both sides'
// settings says. Two of the sessions start with the same settings, so one's match is
// reused for the other, as it is for the clients of one application.
func TestParamsMatchFollowsEveryChange(t *testing.T) {
	newSession := func(startup map[string]string) *session {
		return &session{params: clientParams(startup), startup: clientParams(startup),
			tgt: target{mode: ModeTransaction}}
	}
	newServer := func() *serverConn {
		sc := &serverConn{params: map[string]string{}, dirty: map[string]bool{},
			loginVals: map[string]string{}, reported: map[string]bool{}, prepared: map[uint64]uint64{}}
		for k, v := range map[string]string{"datestyle": "ISO, MDY", "timezone": "UTC",
			"application_name": "", "client_encoding": "UTF8", "is_superuser": "on"} {
			sc.params[k] = v
			sc.reported[k] = true
			if !trackedParams[k] {
				sc.loginVals[k] = v
			}
		}
		return sc
	}
	app := map[string]string{"application_name": "app", "datestyle": "ISO, MDY", "client_encoding": "UTF8"}
	other := map[string]string{"application_name": "other", "timezone": "Europe/Paris", "Bad-Name": "x"}
	names := []string{"datestyle", "timezone", "application_name", "search_path", "work_mem"}
	values := []string{"ISO, MDY", "Postgres, DMY", "UTC", "app", "other", "public", "4MB", "it's"}

	rng := rand.New(rand.NewPCG(1, 2))
	for run := 0; run < 200; run++ {
		sessions := []*session{newSession(app), newSession(app), newSession(other)}
		servers := []*serverConn{newServer(), newServer()}
		var matches, cached int
		for step := 0; step < 60; step++ {
			s := sessions[rng.IntN(len(sessions))]
			sc := servers[rng.IntN(len(servers))]
			k, v := names[rng.IntN(len(names))], values[rng.IntN(len(values))]
			var op string
			switch rng.IntN(8) {
			case 0: // the server reports a setting the client changed
				op = "serverParam " + k + "=" + v
				msg, err := (&pgproto3.ParameterStatus{Name: k, Value: v}).Encode(nil)
				if err != nil {
					t.Fatal(err)
				}
				s.serverParam(sc, msg[5:])
			case 1: // a session SET that ends with its transaction
				op = "SET " + k
				s.noteSets(fmt.Sprintf("SET %s TO '%s'", k, v))
				s.resetDoneLocked(sc, 'I')
			case 2: // RESET of one setting, or of all
				q := "RESET " + k
				if rng.IntN(3) == 0 {
					q = "RESET ALL"
				}
				op = q
				s.noteReset(q)
				s.resetDoneLocked(sc, 'I')
			case 3: // the pool sent the client's settings to sc
				op = "paramsApplied"
				s.paramsApplied(sc)
			case 4: // DISCARD ALL (session mode's clean-up)
				op = "discarded"
				sc.discarded()
			case 5: // a reported setting the client does not track
				op = "setParam " + k + "=" + v
				sc.setParam(k, v)
			default: // attaches
				op = "paramsMatch"
			}
			for i, s := range sessions {
				for j, sc := range servers {
					wasCached := sc.matchOK && sc.matchKey == s.paramsKey()
					got, want := s.paramsMatch(sc), s.paramsMatchMaps(sc)
					if got != want {
						t.Fatalf("run %d step %d (%s): session %d on server %d: paramsMatch %v, the settings say %v\nsession %q\nserver %q dirty %v",
							run, step, op, i, j, got, want, s.params, sc.params, sc.dirty)
					}
					if got {
						matches++
						if wasCached {
							cached++
						}
					}
				}
			}
		}
		if run == 0 && (matches == 0 || cached == 0) {
			t.Fatalf("the sequence never matched (%d) or never answered from a match it remembered (%d)", matches, cached)
		}
	}
}

// TestParamsKeySeparatesValues checks that paramsKey cannot make two different sets of
// settings look the same: values may hold any byte, and names follow one another.
func TestParamsKeySeparatesValues(t *testing.T) {
	sets := []map[string]string{
		{"a": "b:c"},
		{"a": "b", "c": ""},
		{"a": "b\x00sql:c"},
		{"a": "b\x00"},
		{"a": ""},
		{},
		{"a": "1:a1:b"},
		{"a": "1", "a1": "b"},
		{"Bad-Name": "x"}, // not a setting name: the same as no settings, as paramsMatch ignores it
	}
	seen := map[string]int{}
	for i, p := range sets {
		key := (&session{params: p}).paramsKey()
		if j, ok := seen[key]; ok && !(i == 8 && j == 5) {
			t.Errorf("sets %d and %d have the same key %q", j, i, key)
		}
		seen[key] = i
	}
}
