package nbdtest

import "dst/storage/node"

// Memory is node.Memory, kept under this name for the tests that use it.
type Memory = node.Memory

// NewMemory returns node.NewMemory(size).
func NewMemory(size int) *Memory { return node.NewMemory(size) }

// AllFlags are the capabilities a Memory export can honestly advertise
// (node.MemoryFlags).
const AllFlags = node.MemoryFlags
