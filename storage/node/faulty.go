package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"dst/storage/nbd"
)

// OpKind is the kind of a request a Faulty node sees.
type OpKind uint8

// The request kinds of Op.
const (
	OpRead OpKind = iota
	OpWrite
	OpFlush
	OpTrim
	OpZero
)

var opNames = [...]string{OpRead: "read", OpWrite: "write", OpFlush: "flush", OpTrim: "trim", OpZero: "zero"}

func (k OpKind) String() string { return opNames[k] }

// Op is one request as an Injector sees it; Off and Len are zero for a
// flush.
type Op struct {
	Kind     OpKind
	Off, Len int64
}

// ActionKind is what an Injector makes of a request.
type ActionKind uint8

// The actions of an Injector.
const (
	// Pass: the request goes to the node below unchanged.
	Pass ActionKind = iota
	// FailEIO: the request fails with EIO and does nothing (a latent
	// sector error, a failed write or flush).
	FailEIO
	// FlipBit: one bit of the data is inverted, silently: in what a read
	// returns, or in what a write stores (nbdkit's evil filter).
	FlipBit
	// LoseWrite: the write reports success and is not made.
	LoseWrite
)

var actionNames = [...]string{Pass: "pass", FailEIO: "eio", FlipBit: "flip", LoseWrite: "lose"}

func (a ActionKind) String() string { return actionNames[a] }

// Action is an Injector's decision for one request. Bit, for FlipBit, is
// the index of the bit to invert from the request's first byte.
type Action struct {
	Kind ActionKind
	Bit  int64
}

// Injector decides the fault, if any, of each request of a Faulty node
// (pebble's errorfs habit: one method, any policy behind it). It is called
// concurrently.
type Injector interface {
	Inject(op Op) Action
}

// Faulty is a Node that injects media faults into the requests to the
// node below, as an Injector decides: EIO on reads, writes or flushes, a
// silently flipped bit on read or on write, a write that is lost.
//
// Durability contract: none beyond the node below's, by design. A flush
// the injector fails may have left any write since the last good flush on
// the node below or not; a lost write is reported as made. What the
// engine does about each is its own contract (see storage/engine).
type Faulty struct {
	under  Node
	inj    atomic.Pointer[Injector]
	notify func(Op, Action)
}

var _ Node = (*Faulty)(nil)

// NewFaulty wraps under; inj may be nil (no fault). notify, when not nil,
// is told of every fault injected (for logs), after the fact.
func NewFaulty(under Node, inj Injector, notify func(Op, Action)) *Faulty {
	f := &Faulty{under: under, notify: notify}
	f.SetInjector(inj)
	return f
}

// SetInjector replaces the injector; nil injects nothing.
func (f *Faulty) SetInjector(inj Injector) {
	if inj == nil {
		f.inj.Store(nil)
		return
	}
	f.inj.Store(&inj)
}

func (f *Faulty) decide(op Op) Action {
	p := f.inj.Load()
	if p == nil {
		return Action{}
	}
	a := (*p).Inject(op)
	if a.Kind != Pass && f.notify != nil {
		f.notify(op, a)
	}
	return a
}

func (f *Faulty) eio(op Op) error {
	return fmt.Errorf("%v: injected media error on %v of %d bytes at %d: %w", f, op.Kind, op.Len, op.Off, nbd.EIO)
}

// Size returns the node below's size.
func (f *Faulty) Size() int64 { return f.under.Size() }

// Flags returns the node below's flags.
func (f *Faulty) Flags() nbd.TransmissionFlags { return f.under.Flags() }

// String names the node below.
func (f *Faulty) String() string { return "faulty:" + f.under.String() }

// Close closes the node below.
func (f *Faulty) Close() error { return f.under.Close() }

// ReadAt implements nbd.Backend.
func (f *Faulty) ReadAt(ctx context.Context, p []byte, off int64) error {
	op := Op{Kind: OpRead, Off: off, Len: int64(len(p))}
	a := f.decide(op)
	if a.Kind == FailEIO {
		return f.eio(op)
	}
	if err := f.under.ReadAt(ctx, p, off); err != nil {
		return err
	}
	if a.Kind == FlipBit && a.Bit >= 0 && a.Bit < int64(len(p))*8 {
		p[a.Bit/8] ^= 1 << (a.Bit % 8)
	}
	return nil
}

// WriteAt implements nbd.Backend.
func (f *Faulty) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	op := Op{Kind: OpWrite, Off: off, Len: int64(len(p))}
	switch a := f.decide(op); a.Kind {
	case FailEIO:
		return f.eio(op)
	case LoseWrite:
		return nil
	case FlipBit:
		if a.Bit >= 0 && a.Bit < int64(len(p))*8 {
			p = bytes.Clone(p)
			p[a.Bit/8] ^= 1 << (a.Bit % 8)
		}
	}
	return f.under.WriteAt(ctx, p, off, flags)
}

// Flush implements nbd.Backend.
func (f *Faulty) Flush(ctx context.Context) error {
	op := Op{Kind: OpFlush}
	if f.decide(op).Kind == FailEIO {
		return f.eio(op)
	}
	return f.under.Flush(ctx)
}

// Trim implements nbd.Backend.
func (f *Faulty) Trim(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	op := Op{Kind: OpTrim, Off: off, Len: length}
	switch f.decide(op).Kind {
	case FailEIO:
		return f.eio(op)
	case LoseWrite:
		return nil
	}
	return f.under.Trim(ctx, off, length, flags)
}

// WriteZeroes implements nbd.Backend.
func (f *Faulty) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	op := Op{Kind: OpZero, Off: off, Len: length}
	switch f.decide(op).Kind {
	case FailEIO:
		return f.eio(op)
	case LoseWrite:
		return nil
	}
	return f.under.WriteZeroes(ctx, off, length, flags)
}

// Cache implements nbd.Backend.
func (f *Faulty) Cache(ctx context.Context, off, length int64) error {
	return f.under.Cache(ctx, off, length)
}

// FaultRule is one rule of a FaultRules injector: requests of kind Op
// that overlap [Offset, Offset+Length) get Action, with a seeded chance
// of Percent in 100, at most Count times.
type FaultRule struct {
	// Op: read, write, flush, trim, zero, or any.
	Op string `json:"op"`
	// Offset and Length bound the range (Length 0: to the end); a flush
	// has no range and matches any.
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
	// Action: eio, flip (read or write) or lose (write, trim, zero).
	Action string `json:"action"`
	// Percent is the chance per matching request; 0 means 100.
	Percent int `json:"percent"`
	// Count bounds how many requests the rule hits; 0: no bound.
	Count int `json:"count"`
}

// FaultRules is an Injector of rules, the first matching rule deciding;
// its choices come from Seed.
type FaultRules struct {
	Seed  uint64      `json:"seed"`
	Rules []FaultRule `json:"rules"`

	mu   sync.Mutex
	rng  *rand.Rand
	hits []int
	ops  []int8 // parsed Op per rule (-1: any)
	acts []ActionKind
}

// ParseFaultRules reads rules from JSON, such as
//
//	{"seed": 7, "rules": [{"op": "read", "offset": 1048576, "length": 65536, "action": "eio"}]}
//
// and checks them; every error names the rule.
func ParseFaultRules(data []byte) (*FaultRules, error) {
	r := &FaultRules{}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(r); err != nil {
		return nil, fmt.Errorf("node: fault rules: %w", err)
	}
	if err := r.init(); err != nil {
		return nil, err
	}
	return r, nil
}

// NewFaultRules checks rules and returns their injector.
func NewFaultRules(seed uint64, rules ...FaultRule) (*FaultRules, error) {
	r := &FaultRules{Seed: seed, Rules: rules}
	if err := r.init(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *FaultRules) init() error {
	r.rng = rand.New(rand.NewPCG(r.Seed, 0x6661756c7479))
	r.hits = make([]int, len(r.Rules))
	for i, rule := range r.Rules {
		op := int8(-1)
		if rule.Op != "any" {
			op = -2
			for k, name := range opNames {
				if name == rule.Op {
					op = int8(k)
				}
			}
		}
		act := ActionKind(255)
		for k, name := range actionNames {
			if name == rule.Action && ActionKind(k) != Pass {
				act = ActionKind(k)
			}
		}
		switch {
		case op == -2:
			return fmt.Errorf("node: fault rule %d: op %q is not read, write, flush, trim, zero or any", i, rule.Op)
		case act == 255:
			return fmt.Errorf("node: fault rule %d: action %q is not eio, flip or lose", i, rule.Action)
		case act == FlipBit && op != int8(OpRead) && op != int8(OpWrite):
			return fmt.Errorf("node: fault rule %d: flip needs op read or write", i)
		case act == LoseWrite && (op == int8(OpRead) || op == int8(OpFlush) || op == -1):
			return fmt.Errorf("node: fault rule %d: lose needs op write, trim or zero", i)
		case rule.Offset < 0 || rule.Length < 0:
			return fmt.Errorf("node: fault rule %d: negative offset or length", i)
		case rule.Percent < 0 || rule.Percent > 100:
			return fmt.Errorf("node: fault rule %d: percent %d is not within 0..100", i, rule.Percent)
		case rule.Count < 0:
			return fmt.Errorf("node: fault rule %d: negative count", i)
		}
		r.ops = append(r.ops, op)
		r.acts = append(r.acts, act)
	}
	return nil
}

// Inject implements Injector.
func (r *FaultRules) Inject(op Op) Action {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, rule := range r.Rules {
		if r.ops[i] >= 0 && OpKind(r.ops[i]) != op.Kind {
			continue
		}
		lo, hi := rule.Offset, rule.Offset+rule.Length
		if rule.Length == 0 {
			hi = 1 << 62
		}
		if op.Kind != OpFlush && (op.Off+op.Len <= lo || op.Off >= hi) {
			continue
		}
		if rule.Count > 0 && r.hits[i] >= rule.Count {
			continue
		}
		if rule.Percent > 0 && rule.Percent < 100 && r.rng.IntN(100) >= rule.Percent {
			continue
		}
		r.hits[i]++
		a := Action{Kind: r.acts[i]}
		if a.Kind == FlipBit {
			// A bit inside both the request and the rule's range.
			from, to := max(lo, op.Off), min(hi, op.Off+op.Len)
			a.Bit = (from-op.Off)*8 + r.rng.Int64N((to-from)*8)
		}
		return a
	}
	return Action{}
}

// Hits returns how many requests each rule hit, in rule order.
func (r *FaultRules) Hits() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.hits...)
}
