package failover

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
)

// Console adapts the monitor to the pool's admin console (pool.NodeControl): the console's
// SWITCHOVER, ATTACH NODE, DETACH NODE and RECOVER NODE call it, with nodes given by id or
// name.
type Console struct{ M *Monitor }

// Switchover runs Monitor.Switchover to node to.
func (c Console) Switchover(ctx context.Context, to string, rejoin bool) (string, string, error) {
	id, err := c.M.NodeID(to)
	if err != nil {
		return "", "", err
	}
	rep, err := c.M.Switchover(ctx, SwitchoverOptions{To: id, NoRejoin: !rejoin})
	if err != nil {
		return "", "", err
	}
	msg := "switchover done: " + rep.NewPrimary + " is the primary, " + rep.OldPrimary
	switch {
	case rep.Rejoined:
		msg += " streams from it as a standby"
	case rep.RejoinError != "":
		msg += " is stopped (it did not rejoin: " + rep.RejoinError + ")"
	default:
		msg += " is stopped"
	}
	b, _ := json.Marshal(rep)
	return msg, string(b), nil
}

// nodeResult is the JSON detail of ATTACH, DETACH and RECOVER.
type nodeResult struct {
	Action string `json:"action"`
	NodeID int    `json:"node_id"`
	Node   string `json:"node"`
	Result string `json:"result"`
}

func (c Console) node(ctx context.Context, action, node string, f func(context.Context, int) (string, error)) (string, string, error) {
	id, err := c.M.NodeID(node)
	if err != nil {
		return "", "", err
	}
	msg, err := f(ctx, id)
	if err != nil {
		return "", "", err
	}
	b, _ := json.Marshal(nodeResult{Action: action, NodeID: id, Node: c.M.nodes[id].Name, Result: msg})
	return msg, string(b), nil
}

// Attach runs Monitor.Attach.
func (c Console) Attach(ctx context.Context, node string) (string, string, error) {
	return c.node(ctx, "attach", node, c.M.Attach)
}

// Detach runs Monitor.Detach.
func (c Console) Detach(ctx context.Context, node string) (string, string, error) {
	return c.node(ctx, "detach", node, c.M.Detach)
}

// Recover runs Monitor.Recover.
func (c Console) Recover(ctx context.Context, node string) (string, string, error) {
	return c.node(ctx, "recover", node, c.M.Recover)
}

// Status answers the admin console's SHOW FAILOVER: one (key, value) row per item, the
// monitor's view of the cluster and, with failover.etcd, of the election.
func (c Console) Status() [][2]string {
	m := c.M
	m.mu.Lock()
	primary, health := "", "-"
	if m.primary >= 0 {
		primary, health = m.nodes[m.primary].Name, m.health.State.String()
	}
	var detached []string
	for id := range m.nodes {
		if m.detached[id] {
			detached = append(detached, m.nodes[id].Name)
		}
	}
	m.mu.Unlock()
	rows := [][2]string{
		// watching: this monitor's loop runs (failover.enabled, and with etcd the leader).
		{"watching", strconv.FormatBool(m.running.Load())},
		{"primary", primary},
		{"primary_health", health},
		{"detached", strings.Join(detached, ",")},
	}
	if e := m.Elector(); e != nil {
		st := e.Status()
		rows = append(rows,
			[2]string{"etcd_name", st.Name},
			[2]string{"etcd_leader", st.Holder},
			[2]string{"etcd_error", st.EtcdError},
			[2]string{"etcd_terms", strconv.Itoa(st.Terms)})
	}
	return rows
}
