package backup

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// throttle keeps the bytes read from the cluster at or below a rate, averaged from the
// start of the backup (pg_basebackup's --max-rate): a backup of a busy primary then leaves
// it disk bandwidth. With the stream method, reading slower makes the server send slower.
type throttle struct {
	rate  int64 // bytes per second
	sleep func(ctx context.Context, d time.Duration) error
	now   func() time.Time

	mu    sync.Mutex
	start time.Time
	n     int64
}

func newThrottle(rate int64) *throttle {
	if rate <= 0 {
		return nil
	}
	return &throttle{rate: rate, sleep: sleepCtx, now: time.Now}
}

// wait accounts for n more bytes read and sleeps until the average rate since the first
// read is back at or below the limit.
func (t *throttle) wait(ctx context.Context, n int) error {
	if t == nil || n <= 0 {
		return nil
	}
	t.mu.Lock()
	now := t.now()
	if t.start.IsZero() {
		t.start = now
	}
	t.n += int64(n)
	due := t.start.Add(time.Duration(float64(t.n) / float64(t.rate) * float64(time.Second)))
	t.mu.Unlock()
	if d := due.Sub(now); d > 0 {
		return t.sleep(ctx, d)
	}
	return nil
}

// reader wraps r so that reads from it are throttled; reads are cut to a tenth of a second
// of the rate at most, so the rate holds over short spans too.
func (t *throttle) reader(ctx context.Context, r io.Reader) io.Reader {
	if t == nil {
		return r
	}
	return &throttledReader{ctx: ctx, t: t, r: r, max: int(max(t.rate/10, 64<<10))}
}

type throttledReader struct {
	ctx context.Context
	t   *throttle
	r   io.Reader
	max int
}

func (r *throttledReader) Read(p []byte) (int, error) {
	if len(p) > r.max {
		p = p[:r.max]
	}
	n, err := r.r.Read(p)
	if werr := r.t.wait(r.ctx, n); werr != nil && err == nil {
		err = werr
	}
	return n, err
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// ParseRate reads a rate in bytes per second: a number with an optional k, M or G suffix
// (powers of 1024; "100M"), as pg_basebackup's --max-rate takes it; "" and "0" mean no limit.
func ParseRate(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0, nil
	}
	mult := int64(1)
	switch s[len(s)-1] {
	case 'k', 'K':
		mult = 1 << 10
	case 'm', 'M':
		mult = 1 << 20
	case 'g', 'G':
		mult = 1 << 30
	}
	num := s
	if mult > 1 {
		num = s[:len(s)-1]
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("rate %q: want bytes per second with an optional k, M or G suffix, e.g. 100M", s)
	}
	r := int64(v * float64(mult))
	if r > 0 && r < 32<<10 {
		return 0, fmt.Errorf("rate %q is below 32k per second", s)
	}
	return r, nil
}
