package backup

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"
)

// TestThrottleKeepsTheAverageRate: with a fake clock that advances only by the sleeps asked
// for, reading 10 MiB at 2 MiB/s sleeps 5 s in total, and every prefix of the reads stays
// at or below the rate.
func TestThrottleKeepsTheAverageRate(t *testing.T) {
	th := newThrottle(2 << 20)
	now := time.Unix(1000, 0)
	var slept time.Duration
	th.now = func() time.Time { return now }
	th.sleep = func(_ context.Context, d time.Duration) error { slept += d; now = now.Add(d); return nil }
	r := th.reader(context.Background(), bytes.NewReader(make([]byte, 10<<20)))
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, err := r.Read(buf)
		n += int64(k)
		if k > 2<<20/10 {
			t.Fatalf("one read returned %d bytes, more than a tenth of a second of the rate", k)
		}
		if elapsed := now.Sub(time.Unix(1000, 0)).Seconds(); elapsed > 0 && float64(n)/elapsed > 2<<20*1.0001 && n > 2<<20/10 {
			t.Fatalf("after %d bytes and %.2f s the rate is %.0f B/s", n, elapsed, float64(n)/elapsed)
		}
		if err == io.EOF {
			break
		}
	}
	if n != 10<<20 || slept != 5*time.Second {
		t.Fatalf("read %d bytes, slept %v; want 10 MiB and 5s", n, slept)
	}
	if newThrottle(0) != nil || newThrottle(0).reader(context.Background(), r) != r {
		t.Fatal("rate 0 must not throttle")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	real := newThrottle(64 << 10)
	if _, err := real.reader(ctx, bytes.NewReader(make([]byte, 1<<20))).Read(make([]byte, 1<<20)); err == nil {
		t.Fatal("a cancelled context does not end the wait")
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "0": 0, "100M": 100 << 20, "1.5G": 3 << 29, "512k": 512 << 10, "40000": 40000} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"fast", "-1M", "10", "1x"} {
		if _, err := ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) accepted", bad)
		}
	}
}

func TestCheckAnnotations(t *testing.T) {
	if err := CheckAnnotations(map[string]string{"reason": "before upgrade", "ticket": ""}); err != nil {
		t.Fatal(err)
	}
	many := map[string]string{}
	for i := range 33 {
		many[string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	for _, bad := range []map[string]string{{"": "x"}, {"a=b": "x"}, {"a\nb": "x"}, {string(make([]byte, 65)): "x"}, {"k": string(make([]byte, 1025))}, many} {
		if err := CheckAnnotations(bad); err == nil {
			t.Errorf("%d annotations accepted: %q", len(bad), bad)
		}
	}
}
