package image

import (
	"context"
	"errors"
	"io"

	"github.com/pe-project/pe/erofs"
)

// ctxReader is a reader that fails with the context's error once the
// context is done, so long copies stop promptly on cancellation.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// entryCause returns the cause inside an *erofs.EntryError, whose message
// repeats the image path, so callers can name the entry their own way.
func entryCause(err error) error {
	var ee *erofs.EntryError
	if errors.As(err, &ee) && ee.Err != nil {
		return ee.Err
	}
	return err
}
