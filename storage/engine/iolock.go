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

// ioRWLock is a readers-writer lock whose waits are channel operations,
// for the same reason as ioLock: client writes hold the read side of a
// region's stripe while they wait for a member's timeout or for room in
// the activity log, and a resync copy waits for the write side. A writer
// waiting keeps new readers out. Waits allocate a channel only when they
// happen; uncontended use allocates nothing. Initialise it with init.
type ioRWLock struct {
	mu      ioLock
	readers int
	writer  bool
	writers int           // waiting for the write side
	wake    chan struct{} // closed at the next release; nil when no one waits
}

func (l *ioRWLock) init() { l.mu = newIOLock() }

// waitChan returns the channel the next release closes (l.mu held).
func (l *ioRWLock) waitChan() <-chan struct{} {
	if l.wake == nil {
		l.wake = make(chan struct{})
	}
	return l.wake
}

// broadcast wakes every waiter (l.mu held).
func (l *ioRWLock) broadcast() {
	if l.wake != nil {
		close(l.wake)
		l.wake = nil
	}
}

// RLock takes the read side.
func (l *ioRWLock) RLock() {
	for {
		l.mu.Lock()
		if !l.writer && l.writers == 0 {
			l.readers++
			l.mu.Unlock()
			return
		}
		w := l.waitChan()
		l.mu.Unlock()
		<-w
	}
}

// RUnlock releases the read side.
func (l *ioRWLock) RUnlock() {
	l.mu.Lock()
	l.readers--
	if l.readers == 0 {
		l.broadcast()
	}
	l.mu.Unlock()
}

// Lock takes the write side.
func (l *ioRWLock) Lock() {
	l.mu.Lock()
	l.writers++
	for l.writer || l.readers > 0 {
		w := l.waitChan()
		l.mu.Unlock()
		<-w
		l.mu.Lock()
	}
	l.writers--
	l.writer = true
	l.mu.Unlock()
}

// Unlock releases the write side.
func (l *ioRWLock) Unlock() {
	l.mu.Lock()
	l.writer = false
	l.broadcast()
	l.mu.Unlock()
}
