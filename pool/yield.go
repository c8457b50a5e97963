package pool

import _ "unsafe" // for go:linkname

// goyield is the runtime's own yield (runtime/proc.go), which the runtime keeps for outside
// callers (go.dev/issue/67401): like runtime.Gosched it lets the goroutines queued on the
// P run and starts a new scheduling tick, but it queues the goroutine on its own P rather
// than on the global run queue, and wakes no other thread to look for work. Gosched's
// wake-up (wakep) is a futex call and two context switches of a thread that then finds
// nothing to do, or takes the goroutine over on another thread, at every pass of the event
// loop through the scheduler.
//
//go:linkname goyield runtime.goyield
func goyield()
