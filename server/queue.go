package server

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"time"
)

// Errors of queue.acquire.
var (
	// errQueueFull means the queue already holds its maximum of waiting
	// requests.
	errQueueFull = errors.New("the run queue is full")
	// errQueueWait means no VM slot came free within the maximum wait.
	errQueueWait = errors.New("no VM slot came free in time")
	// errDraining means the server is shutting down.
	errDraining = errors.New("the server is shutting down")
)

// queue hands out a fixed number of run slots in order of arrival. Go's
// channels and mutexes promise no order, so waiters queue in a list and a
// released slot goes straight to the oldest one.
type queue struct {
	mu       sync.Mutex
	slots    int
	maxQueue int
	running  int
	waiters  list.List // of *waiter, oldest first
	draining bool
	// onChange, when set, is called (outside mu) after the counts change.
	onChange func(queued, running int)
}

// waiter is one request waiting for a slot; ready is closed when it got one.
type waiter struct {
	ready   chan struct{}
	granted bool
}

func newQueue(slots, maxQueue int) *queue {
	return &queue{slots: max(1, slots), maxQueue: max(0, maxQueue)}
}

// admit reports whether a new request may join: the queue has room and
// the server is not shutting down. It is checked before reading a body, so
// a full server does not read uploads it will refuse.
func (q *queue) admit() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.draining:
		return errDraining
	case q.running >= q.slots && q.waiters.Len() >= q.maxQueue:
		return errQueueFull
	}
	return nil
}

// acquire waits up to maxWait for a slot, in order of arrival. The
// returned release gives the slot back; it must be called exactly once.
func (q *queue) acquire(ctx context.Context, maxWait time.Duration) (release func(), err error) {
	q.mu.Lock()
	if q.draining {
		q.mu.Unlock()
		return nil, errDraining
	}
	if q.running < q.slots && q.waiters.Len() == 0 {
		q.running++
		q.mu.Unlock()
		q.changed()
		return q.release, nil
	}
	if q.waiters.Len() >= q.maxQueue {
		q.mu.Unlock()
		return nil, errQueueFull
	}
	w := &waiter{ready: make(chan struct{})}
	e := q.waiters.PushBack(w)
	q.mu.Unlock()
	q.changed()

	timer := time.NewTimer(maxWait)
	defer timer.Stop()
	select {
	case <-w.ready:
		return q.release, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = errQueueWait
	}
	q.mu.Lock()
	if w.granted {
		// The slot arrived as we gave up: pass it on.
		q.mu.Unlock()
		q.release()
		return nil, err
	}
	q.waiters.Remove(e)
	q.mu.Unlock()
	q.changed()
	return nil, err
}

// release gives a slot to the oldest waiter, or frees it.
func (q *queue) release() {
	q.mu.Lock()
	if front := q.waiters.Front(); front != nil {
		w := q.waiters.Remove(front).(*waiter)
		w.granted = true
		close(w.ready)
	} else {
		q.running--
	}
	q.mu.Unlock()
	q.changed()
}

// drain refuses new requests and wakes none: waiting ones keep their
// place, so a shutdown finishes what it accepted.
func (q *queue) drain() {
	q.mu.Lock()
	q.draining = true
	q.mu.Unlock()
}

// counts returns the requests waiting and the slots in use.
func (q *queue) counts() (queued, running int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waiters.Len(), q.running
}

func (q *queue) changed() {
	if q.onChange != nil {
		queued, running := q.counts()
		q.onChange(queued, running)
	}
}
