// Package memfault turns a fault on memory that may go away under a copy
// — a mapped file another process shrank — into an error instead of a
// crash of the process.
package memfault

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// ErrFault is wrapped by the error of a copy that faulted.
var ErrFault = errors.New("fault on mapped memory")

// Do runs fn; a memory fault inside it makes Do return an error wrapping
// ErrFault (with the address) instead of crashing. fn must be a plain
// copy: it is abandoned where it faulted. Other panics pass through.
func Do(fn func()) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if v := recover(); v != nil {
			f, ok := v.(interface{ Addr() uintptr })
			if !ok {
				panic(v)
			}
			err = fmt.Errorf("%w at %#x", ErrFault, f.Addr())
		}
	}()
	fn()
	return nil
}
