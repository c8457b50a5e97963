package main

import (
	"context"
	"sync"
	"time"

	"github.com/pgharbor/pgharbor/wal"
)

// serverReceivers runs `wal receive` inside the server for every cluster whose
// configuration sets wal.stream.enabled. A reload stops them all and starts the ones the new
// configuration enables; they resume from their slots.
type serverReceivers struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// apply stops the running receivers and starts those cfg enables.
func (rs *serverReceivers) apply(ctx context.Context, a *app, cfg *Config) error {
	list, err := cfg.Clusters()
	if err != nil {
		return err
	}
	rs.stop()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rctx, cancel := context.WithCancel(ctx)
	rs.cancel = cancel
	for _, cc := range list {
		if !cc.Cfg.WAL.Stream.Enabled {
			continue
		}
		c := a.forCluster(cc)
		log := c.logger.With("job", "wal receive")
		rs.wg.Add(1)
		go func() {
			defer rs.wg.Done()
			for rctx.Err() == nil {
				if err := runServerReceiver(rctx, c); err != nil && rctx.Err() == nil {
					// A receiver that cannot stream (a setting to change on the server, an
					// unreachable repository) is tried again, slowly; its status in the
					// repository, /metrics and the page show it.
					log.Error("WAL receiver stopped; starting it again in 30 s", "err", err)
				}
				select {
				case <-rctx.Done():
				case <-time.After(30 * time.Second):
				}
			}
		}()
	}
	return nil
}

func runServerReceiver(ctx context.Context, c *app) error {
	r, opts, err := c.openReceiver(ctx)
	if err != nil {
		return err
	}
	defer r.Backend().Close()
	opts.Logger = c.logger.With("job", "wal receive")
	return wal.Receive(ctx, r, opts)
}

// stop ends every receiver and waits for them.
func (rs *serverReceivers) stop() {
	rs.mu.Lock()
	cancel := rs.cancel
	rs.cancel = nil
	rs.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	rs.wg.Wait()
}
