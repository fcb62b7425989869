package erofs

import (
	"bufio"
	"fmt"
	"io"
	"os"
)

// tailStore holds the tail ends of files (the last partial block) until
// Close packs them next to their inodes. Small trees keep them in memory; past
// memLimit they spill to an unlinked temporary file so a tree with millions
// of files does not hold gigabytes of tails in RAM.
type tailStore struct {
	mem      []byte
	memLimit int
	tempDir  string
	file     *os.File
	fileBuf  *bufio.Writer
	fileSize int64
}

func newTailStore(tempDir string, memLimit int) *tailStore {
	return &tailStore{memLimit: memLimit, tempDir: tempDir}
}

// put stores b and returns its offset.
func (t *tailStore) put(b []byte) (int64, error) {
	if t.file == nil && len(t.mem)+len(b) <= t.memLimit {
		off := int64(len(t.mem))
		t.mem = append(t.mem, b...)
		return off, nil
	}
	if t.file == nil {
		f, err := os.CreateTemp(t.tempDir, ".pe-erofs-tails-*")
		if err != nil {
			return 0, fmt.Errorf("spooling file tails: %w", err)
		}
		// Unlinked at once: nothing is left behind if the process dies.
		if err := os.Remove(f.Name()); err != nil {
			f.Close()
			return 0, fmt.Errorf("spooling file tails: %w", err)
		}
		t.file = f
		t.fileBuf = bufio.NewWriterSize(f, 1<<20)
	}
	off := int64(len(t.mem)) + t.fileSize
	if _, err := t.fileBuf.Write(b); err != nil {
		return 0, fmt.Errorf("spooling file tails: %w", err)
	}
	t.fileSize += int64(len(b))
	return off, nil
}

// readAt fills b from offset off. Callers finish all puts first.
func (t *tailStore) readAt(b []byte, off int64) error {
	if off+int64(len(b)) <= int64(len(t.mem)) {
		copy(b, t.mem[off:])
		return nil
	}
	if t.file == nil || off < int64(len(t.mem)) {
		return fmt.Errorf("tail store: range %d+%d out of bounds", off, len(b))
	}
	if t.fileBuf.Buffered() > 0 {
		if err := t.fileBuf.Flush(); err != nil {
			return fmt.Errorf("spooling file tails: %w", err)
		}
	}
	if _, err := t.file.ReadAt(b, off-int64(len(t.mem))); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("reading spooled file tail: %w", err)
	}
	return nil
}

func (t *tailStore) close() error {
	t.mem = nil
	if t.file == nil {
		return nil
	}
	err := t.file.Close()
	t.file = nil
	return err
}
