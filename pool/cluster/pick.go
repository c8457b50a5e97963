package cluster

import (
	"math"
	"time"
)

// pickReader is PickReader's pure part: among cands (up nodes; the primary only if it is the
// chosen one) it keeps standbys within the lag limits and any node with weight > 0, and
// picks one by weighted rendezvous hashing of key.
func pickReader(cands []NodeState, key uint64, maxLagBytes int64, maxLagTime time.Duration) (NodeState, bool) {
	best, bestScore, found := NodeState{}, math.Inf(-1), false
	for _, n := range cands {
		if n.Status != StatusUp || n.Weight <= 0 {
			continue
		}
		switch n.Role {
		case RolePrimary:
		case RoleStandby:
			if maxLagBytes > 0 && n.LagBytes > maxLagBytes {
				continue
			}
			if maxLagTime > 0 && n.LagTime > maxLagTime {
				continue
			}
		default:
			continue
		}
		// Uniform u in (0,1) from (key, node id); -w/ln(u) is the weighted rendezvous score:
		// node i wins with probability w_i / Σw.
		u := (float64(mix64(key^mix64(uint64(n.ID)+0x9e3779b97f4a7c15))>>11) + 0.5) / (1 << 53)
		score := -n.Weight / math.Log(u)
		if !found || score > bestScore {
			best, bestScore, found = n, score, true
		}
	}
	return best, found
}

// mix64 is splitmix64's finaliser: a cheap, well-spread 64-bit hash.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
