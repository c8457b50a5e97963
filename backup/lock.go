package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
)

// ErrLocked means another backup, or an expire, of the same cluster is running.
var ErrLocked = errors.New("another backup or expire of this cluster is running")

// ExpireLabel is the label an expire writes into the lock it holds (backups write theirs).
const ExpireLabel = "expire"

// lockInfo is the content of the lock object. The holder rewrites it every heartbeat; a
// lock whose holder is a dead process on this host, or whose heartbeat is older than the
// stale timeout, is taken over.
type lockInfo struct {
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Label     string    `json:"label"`
	Started   time.Time `json:"started"`
	Heartbeat time.Time `json:"heartbeat"`
}

// Lock is a held repository lock.
type Lock struct {
	r    *repo.Repo
	key  string
	info lockInfo
	stop chan struct{}
	done chan struct{}
}

func lockKey(r *repo.Repo, name string) string { return r.Key("locks", name+".lock") }

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// AcquireLock takes the named lock of the cluster. stale is how old a heartbeat may be before
// a lock held on another host is considered abandoned.
func AcquireLock(ctx context.Context, r *repo.Repo, name, label string, stale time.Duration) (*Lock, error) {
	host, _ := os.Hostname()
	now := time.Now().UTC()
	l := &Lock{r: r, key: lockKey(r, name), info: lockInfo{Host: host, PID: os.Getpid(), Label: label, Started: now, Heartbeat: now}}
	for attempt := 0; attempt < 2; attempt++ {
		err := r.PutJSON(ctx, l.key, l.info, true)
		if err == nil {
			l.stop, l.done = make(chan struct{}), make(chan struct{})
			go l.heartbeat(stale / 4)
			return l, nil
		}
		if !errors.Is(err, storage.ErrExists) {
			return nil, fmt.Errorf("take lock %s: %w", r.Location(l.key), err)
		}
		var held lockInfo
		if err := r.GetAdvisoryJSON(ctx, l.key, &held); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				continue // released meanwhile
			}
			return nil, fmt.Errorf("read lock %s: %w", r.Location(l.key), err)
		}
		deadHere := held.Host == host && !processAlive(held.PID)
		expired := time.Since(held.Heartbeat) > stale
		if !deadHere && !expired {
			what := "backup " + held.Label
			if held.Label == ExpireLabel {
				what = "expire"
			}
			return nil, fmt.Errorf("%w: %s on host %s (pid %d) since %s, last heartbeat %s ago; if that process is gone, the lock expires %s after its last heartbeat",
				ErrLocked, what, held.Host, held.PID, held.Started.Format(time.RFC3339), time.Since(held.Heartbeat).Round(time.Second), stale)
		}
		if err := r.Backend().Delete(ctx, l.key); err != nil {
			return nil, fmt.Errorf("remove stale lock %s: %w", r.Location(l.key), err)
		}
	}
	return nil, fmt.Errorf("%w: could not take the lock %s", ErrLocked, r.Location(l.key))
}

func (l *Lock) heartbeat(every time.Duration) {
	defer close(l.done)
	if every < time.Second {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.info.Heartbeat = time.Now().UTC()
			ctx, cancel := context.WithTimeout(context.Background(), every)
			_ = l.r.PutJSON(ctx, l.key, l.info, false)
			cancel()
		}
	}
}

// Release gives the lock up.
func (l *Lock) Release(ctx context.Context) error {
	close(l.stop)
	<-l.done
	return l.r.Backend().Delete(ctx, l.key)
}

// lockHolder reads who holds a lock (for reports); ok is false when nobody live does.
func lockHolder(ctx context.Context, r *repo.Repo, name string) (lockInfo, bool) {
	var held lockInfo
	if err := r.GetAdvisoryJSON(ctx, lockKey(r, name), &held); err != nil {
		return held, false
	}
	host, _ := os.Hostname()
	if held.Host == host {
		return held, processAlive(held.PID)
	}
	return held, time.Since(held.Heartbeat) < 2*time.Minute
}
