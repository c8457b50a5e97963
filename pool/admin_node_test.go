package pool

import (
	"context"
	"errors"
	"strings"
	"testing"
)

type fakeNodeControl struct {
	calls []string
	err   error
}

func (f *fakeNodeControl) record(s string) (string, string, error) {
	f.calls = append(f.calls, s)
	if f.err != nil {
		return "", "", f.err
	}
	return "done " + s, `{"call":"` + s + `"}`, nil
}

func (f *fakeNodeControl) Switchover(_ context.Context, to string, rejoin bool) (string, string, error) {
	if rejoin {
		return f.record("switchover " + to)
	}
	return f.record("switchover " + to + " norejoin")
}
func (f *fakeNodeControl) Attach(_ context.Context, n string) (string, string, error) {
	return f.record("attach " + n)
}
func (f *fakeNodeControl) Detach(_ context.Context, n string) (string, string, error) {
	return f.record("detach " + n)
}
func (f *fakeNodeControl) Recover(_ context.Context, n string) (string, string, error) {
	return f.record("recover " + n)
}

func TestAdminNodeCommandsReachTheNodeControl(t *testing.T) {
	s := fuzzServer(t)
	ctx := context.Background()
	if out := string(s.adminQuery(ctx, "SWITCHOVER 1")); !strings.Contains(out, "need the failover monitor") {
		t.Fatalf("without a node control: %q", out)
	}
	f := &fakeNodeControl{}
	s.SetNodeControl(f)
	for q, want := range map[string]string{
		"switchover to s1 norejoin;": "switchover s1 norejoin",
		"SWITCHOVER 2":               "switchover 2",
		"ATTACH NODE 2":              "attach 2",
		"detach node s2":             "detach s2",
		"RECOVER NODE 1":             "recover 1",
	} {
		f.calls = nil
		out := string(s.adminQuery(ctx, q))
		if len(f.calls) != 1 || f.calls[0] != want {
			t.Errorf("%q called %v, want %q", q, f.calls, want)
		}
		if !strings.Contains(out, "done "+want) || !strings.Contains(out, `{"call":"`+want+`"}`) {
			t.Errorf("%q answered %q", q, out)
		}
	}
	f.calls = nil
	for _, q := range []string{"ATTACH NODE", "SWITCHOVER", "SWITCHOVER TO 1 2 3", "DETACH NODE 1 2"} {
		if out := string(s.adminQuery(ctx, q)); !strings.Contains(out, "usage:") {
			t.Errorf("%q: %q, want a usage error", q, out)
		}
	}
	if len(f.calls) != 0 {
		t.Errorf("malformed commands reached the node control: %v", f.calls)
	}
	f.err = errors.New("node 0 (n0) is the primary")
	if out := string(s.adminQuery(ctx, "DETACH NODE 0")); !strings.Contains(out, "55000") || !strings.Contains(out, "detach: node 0 (n0) is the primary") {
		t.Errorf("refused command answered %q", out)
	}
}

type fakeNodeStatus struct{ fakeNodeControl }

func (fakeNodeStatus) Status() [][2]string {
	return [][2]string{{"watching", "true"}, {"etcd_leader", "mon-a"}}
}

func TestAdminShowFailover(t *testing.T) {
	s := fuzzServer(t)
	ctx := context.Background()
	if out := string(s.adminQuery(ctx, "SHOW FAILOVER")); !strings.Contains(out, "no failover monitor") {
		t.Fatalf("without a monitor: %q", out)
	}
	s.SetNodeControl(&fakeNodeControl{}) // node commands without a status
	if out := string(s.adminQuery(ctx, "show failover;")); !strings.Contains(out, "no failover monitor") {
		t.Fatalf("without a status: %q", out)
	}
	s.SetNodeControl(&fakeNodeStatus{})
	out := string(s.adminQuery(ctx, "show failover;"))
	for _, want := range []string{"watching", "true", "etcd_leader", "mon-a", "SHOW"} {
		if !strings.Contains(out, want) {
			t.Errorf("SHOW FAILOVER answered %q, lacks %q", out, want)
		}
	}
}
