package attach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrAttached means a name is attached by a live process.
var ErrAttached = errors.New("already attached")

// ErrNotAttached means no attachment of that name or device is recorded.
var ErrNotAttached = errors.New("not attached")

// State is what a Registry records of one attachment, in NAME.json.
type State struct {
	Name       string `json:"name"`
	PID        int    `json:"pid"`
	URL        string `json:"url"`
	Mode       string `json:"mode"`
	Mountpoint string `json:"mountpoint,omitempty"`
	File       string `json:"file,omitempty"`
	Device     string `json:"device"`
}

// Registry records the attachments of processes of this machine in a
// state directory (such as /run/dst): NAME.json holds the State, NAME.lock
// is locked (flock) by the serving process for as long as it lives — the
// kernel drops the lock when it dies, so a recorded pid that was reused
// does not look alive — NAME.log is its log and NAME/ its FUSE mountpoint.
type Registry struct {
	Dir string
}

// Mountpoint returns the FUSE mountpoint of name.
func (r Registry) Mountpoint(name string) string { return filepath.Join(r.Dir, name) }

// LogPath returns the log file of name.
func (r Registry) LogPath(name string) string { return filepath.Join(r.Dir, name+".log") }

func (r Registry) statePath(name string) string { return filepath.Join(r.Dir, name+".json") }

func (r Registry) lockPath(name string) string { return filepath.Join(r.Dir, name+".lock") }

// Lock is the lock a live attachment holds on its name.
type Lock struct{ f *os.File }

// Lock takes the lock of name, creating the state directory; it fails
// with ErrAttached (and the recorded state, if any, in the message) when
// a live process holds it. The lock's descriptor is close-on-exec.
func (r Registry) Lock(name string) (*Lock, error) {
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	f, err := os.OpenFile(r.lockPath(name), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			if s, serr := r.Read(name); serr == nil {
				return nil, fmt.Errorf("%s is %w (pid %d, device %s; detach it first)", name, ErrAttached, s.PID, s.Device)
			}
			return nil, fmt.Errorf("%s is %w (being attached or detached)", name, ErrAttached)
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock.
func (l *Lock) Unlock() {
	if l != nil && l.f != nil {
		l.f.Close() // closing drops the flock
		l.f = nil
	}
}

// Alive reports whether a live process holds the lock of name.
func (r Registry) Alive(name string) bool {
	f, err := os.Open(r.lockPath(name))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	return false
}

// Write records s atomically.
func (r Registry) Write(s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := r.statePath(s.Name) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("state of %s: %w", s.Name, err)
	}
	if err := os.Rename(tmp, r.statePath(s.Name)); err != nil {
		return fmt.Errorf("state of %s: %w", s.Name, err)
	}
	return nil
}

// Read returns the recorded state of name; the error wraps ErrNotAttached
// when there is none.
func (r Registry) Read(name string) (State, error) {
	var s State
	b, err := os.ReadFile(r.statePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("%s: %w (no %s)", name, ErrNotAttached, r.statePath(name))
	}
	if err != nil {
		return s, fmt.Errorf("state of %s: %w", name, err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("state of %s: %s: %w", name, r.statePath(name), err)
	}
	return s, nil
}

// Remove deletes the recorded state of name.
func (r Registry) Remove(name string) error {
	if err := os.Remove(r.statePath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("state of %s: %w", name, err)
	}
	return nil
}

// Find returns the recorded state whose device is dev.
func (r Registry) Find(dev string) (State, error) {
	paths, _ := filepath.Glob(filepath.Join(r.Dir, "*.json"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var s State
		if json.Unmarshal(b, &s) == nil && s.Device == dev {
			return s, nil
		}
	}
	return State{}, fmt.Errorf("%s: %w (no state in %s records it)", dev, ErrNotAttached, r.Dir)
}

// CleanStale cleans what a dead attachment of name left: its FUSE mount,
// loop devices and state file. It fails with ErrAttached if name is
// alive.
func (r Registry) CleanStale(ctx context.Context, name string, log *slog.Logger) error {
	lock, err := r.Lock(name)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	mp := r.Mountpoint(name)
	if s, err := r.Read(name); err == nil && s.Mountpoint != "" {
		mp = s.Mountpoint
	}
	if err := CleanStale(ctx, mp, log); err != nil {
		return err
	}
	return r.Remove(name)
}

// Detach stops the live attachment of name — SIGTERM to its process,
// then, if it has not let go of its lock within ctx, SIGKILL — and cleans
// whatever it left. It returns the state it detached; the error wraps
// ErrNotAttached when nothing of name is recorded or alive.
func (r Registry) Detach(ctx context.Context, name string, log *slog.Logger) (State, error) {
	s, serr := r.Read(name)
	if serr != nil && !errors.Is(serr, ErrNotAttached) {
		return s, serr
	}
	if r.Alive(name) {
		if s.PID <= 0 {
			return s, fmt.Errorf("detach %s: it is alive but records no pid (still attaching?)", name)
		}
		if err := syscall.Kill(s.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return s, fmt.Errorf("detach %s: signal pid %d: %w", name, s.PID, err)
		}
		if !r.waitDead(ctx, name) {
			log.Warn("the attach process did not stop in time; killing it", "name", name, "pid", s.PID)
			_ = syscall.Kill(s.PID, syscall.SIGKILL)
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			dead := r.waitDead(kctx, name)
			cancel()
			if !dead {
				return s, fmt.Errorf("detach %s: pid %d holds on after SIGKILL", name, s.PID)
			}
		}
	} else if serr != nil {
		return s, serr
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	if err := r.CleanStale(cctx, name, log); err != nil {
		return s, fmt.Errorf("detach %s: %w", name, err)
	}
	return s, nil
}

// waitDead polls until nobody holds the lock of name, within ctx.
func (r Registry) waitDead(ctx context.Context, name string) bool {
	for r.Alive(name) {
		select {
		case <-ctx.Done():
			return !r.Alive(name)
		case <-time.After(20 * time.Millisecond): // polling: a lock's release has no event to wait on
		}
	}
	return true
}
