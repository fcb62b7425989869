package erofs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// zpipe compresses files on several cores while keeping the image exactly
// what one core would write. Add reads a file that fits in the input
// window into memory and queues it; workers compress queued files; the
// Writer's own goroutine commits finished files strictly in the order they
// were added (writing their blocks, giving them block addresses). Anything
// else that writes data blocks (a large streamed file, a flat file with
// blocks, directories at Close) first drains the queue, so block order is
// the order of Add calls, and each file's encoding starts from the same
// state whichever worker runs it.
type zpipe struct {
	cfg     *compressConfig
	bs      int
	workers int
	jobs    chan *zjob
	pending []*zjob // queued, not committed, oldest first
	queued  int     // bytes of file data in pending
	wg      sync.WaitGroup
	started bool
}

// zjob is one queued file.
type zjob struct {
	ino   *inode
	data  []byte
	flat  bool // store flat without trying compression
	stage []byte
	res   zresult
	keep  bool // compressed is smaller: write stage
	err   error
	done  chan struct{}
}

// Queue bounds: enough files in flight that a slow one at the head does
// not idle the workers, within a few windows of memory.
const (
	zQueueJobs  = 64
	zQueueBytes = 8 << 20
)

func newZpipe(cfg *compressConfig, bs int) *zpipe {
	n := min(runtime.GOMAXPROCS(0), 4)
	return &zpipe{cfg: cfg, bs: bs, workers: n, jobs: make(chan *zjob, zQueueJobs)}
}

func (p *zpipe) start() {
	p.started = true
	for range p.workers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			z := newZwriter(p.cfg, p.bs, false)
			for j := range p.jobs {
				j.res, j.keep, j.err = z.decideSmall(j.data, j.ino.xattrs, &j.stage)
				close(j.done)
			}
		}()
	}
}

// submit reads the size bytes of a regular file from r and queues it;
// flat files are queued too when others are pending, to keep their blocks
// in order.
func (p *zpipe) submit(w *Writer, ino *inode, r io.Reader, size uint64, flat bool) error {
	for len(p.pending) > 0 && (len(p.pending) >= zQueueJobs || p.queued+int(size) > zQueueBytes) {
		if err := p.commitOne(w); err != nil {
			return err
		}
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(r, data); err != nil {
		return shortData(err, size)
	}
	j := &zjob{ino: ino, data: data, flat: flat, done: make(chan struct{})}
	if flat {
		close(j.done)
	} else {
		if !p.started {
			p.start()
		}
		p.jobs <- j // never blocks: at most zQueueJobs are pending
	}
	p.pending = append(p.pending, j)
	p.queued += len(data)
	// Commit what is already done, so memory stays low.
	for len(p.pending) > 0 && isDone(p.pending[0]) {
		if err := p.commitOne(w); err != nil {
			return err
		}
	}
	return nil
}

func isDone(j *zjob) bool {
	select {
	case <-j.done:
		return true
	default:
		return false
	}
}

// commitOne waits for the oldest queued file and writes it.
func (p *zpipe) commitOne(w *Writer) error {
	j := p.pending[0]
	<-j.done
	p.pending[0] = nil
	p.pending = p.pending[1:]
	p.queued -= len(j.data)
	if w.err != nil {
		return w.err
	}
	if j.err != nil {
		w.err = fmt.Errorf("erofs: %w", j.err)
		return w.err
	}
	size := uint64(len(j.data))
	if j.flat || !j.keep {
		return w.writeFlat(j.ino, bytes.NewReader(j.data), size, "")
	}
	start := w.nextBlk
	if start+j.res.nblocks > 1<<32-1 {
		w.err = errors.New("erofs: image exceeds the 32-bit block address space")
		return w.err
	}
	if err := w.writeOut(j.stage); err != nil {
		return err
	}
	w.nextBlk += j.res.nblocks
	w.placeCompressed(j.ino, size, start, j.res)
	return nil
}

// drain commits every queued file.
func (p *zpipe) drain(w *Writer) error {
	for len(p.pending) > 0 {
		if err := p.commitOne(w); err != nil {
			return err
		}
	}
	return nil
}

// stop ends the workers (after a drain, or when abandoning the image).
func (p *zpipe) stop() {
	if p.started {
		close(p.jobs)
		p.wg.Wait()
		p.started = false
		p.jobs = make(chan *zjob, zQueueJobs)
	}
	p.pending, p.queued = nil, 0
}
