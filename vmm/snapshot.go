package vmm

import (
	"bytes"
	"context"
	"errors"
	"sync"
)

// Files a [Snapshotter] writes into a snapshot directory.
const (
	// SnapshotMemFile is the guest's RAM, as big as its memory. Restored
	// VMs map it privately (copy-on-write): it is never written again.
	SnapshotMemFile = "mem"
	// SnapshotStateFile is the device and CPU state.
	SnapshotStateFile = "state"
)

// ErrNoSnapshots is returned by backends that cannot save or restore VMs.
var ErrNoSnapshots = errors.New("this VMM backend cannot snapshot VMs")

// Snapshotter is a [Backend] that can save a booted VM and start copies of
// it. The guest tells the host it is ready to be saved by writing a marker
// on its console, and waits to be woken by a byte on the same console (the
// serial port): both work on every VMM.
type Snapshotter interface {
	Backend
	// Version returns the VMM's version: a snapshot is restored only by
	// the version that saved it.
	Version(ctx context.Context) (string, error)
	// SaveSnapshot boots cfg, waits until the guest has written ready on
	// its console, pauses the VM, writes its memory and device state into
	// dir (an existing directory) and stops it. Nothing it started runs
	// when it returns, error or not.
	SaveSnapshot(ctx context.Context, cfg *Config, dir string, ready []byte) error
	// RestoreSnapshot starts a VM from the state SaveSnapshot wrote in dir,
	// with cfg describing the same machine (the disks' paths may differ,
	// not their number, sizes or modes), resumes it and writes wake to the
	// guest's console. ctx bounds the restore only, as for Start.
	RestoreSnapshot(ctx context.Context, cfg *Config, dir string, wake []byte) (Machine, error)
}

// MarkerWriter is an io.Writer that watches the stream written to it for a
// marker (across writes) and closes Seen when it appears. It keeps only
// what it needs to find the marker.
type MarkerWriter struct {
	marker []byte
	mu     sync.Mutex
	tail   []byte
	seen   chan struct{}
	found  bool
}

// NewMarkerWriter returns a writer watching for marker.
func NewMarkerWriter(marker []byte) *MarkerWriter {
	return &MarkerWriter{marker: bytes.Clone(marker), seen: make(chan struct{})}
}

// Write implements io.Writer; it never fails.
func (w *MarkerWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.found || len(w.marker) == 0 {
		return len(p), nil
	}
	w.tail = append(w.tail, p...)
	if bytes.Contains(w.tail, w.marker) {
		w.found = true
		w.tail = nil
		close(w.seen)
		return len(p), nil
	}
	if k := len(w.marker) - 1; len(w.tail) > k {
		w.tail = append(w.tail[:0], w.tail[len(w.tail)-k:]...)
	}
	return len(p), nil
}

// Seen is closed once the marker has been written.
func (w *MarkerWriter) Seen() <-chan struct{} { return w.seen }
