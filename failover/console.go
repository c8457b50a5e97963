package failover

import (
	"context"
	"encoding/json"
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
