package engine

// ioLock is a mutex held across I/O (superblock and bitmap writes that may
// wait for a member's timeout). Its wait is a channel send, which a
// testing/synctest bubble counts as durably blocked: while one goroutine
// waits for the lock and the holder waits on a timer, the bubble's clock
// moves on and the timer fires. A sync.Mutex wait is not durable, so it
// would freeze a simulation's clock (storage/sim found this). The zero
// value is not usable: make it with newIOLock.
type ioLock chan struct{}

func newIOLock() ioLock { return make(ioLock, 1) }

// Lock takes the lock, waiting for its holder to release it.
func (l ioLock) Lock() { l <- struct{}{} }

// Unlock releases the lock.
func (l ioLock) Unlock() { <-l }
