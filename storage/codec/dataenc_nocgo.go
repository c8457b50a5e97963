//go:build !cgo

package codec

import "fmt"

// haveCZstd says this binary has the C encoder: built without cgo, it has not.
const haveCZstd = false

func newCDataEncoder(level, windowLog int) (dataEncoder, error) {
	return nil, fmt.Errorf("%w: compression encoder %q: this pgharbor was built without cgo (CGO_ENABLED=0); use %q or %q", ErrConfig, EncoderC, EncoderAuto, EncoderGo)
}
