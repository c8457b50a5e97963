package fs

// NamedTempOnly makes b write through named temporary files, as on a filesystem without
// unnamed files.
func NamedTempOnly(b *Backend) { b.probe.Do(func() {}) }

// WritesUnnamed reports whether b's Put writes unnamed files.
func WritesUnnamed(b *Backend) bool { return b.unnamedOK() }
