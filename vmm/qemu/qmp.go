package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// QMP is a client of QEMU's machine protocol (QMP) on a Unix socket: one
// command at a time, events skipped.
type QMP struct {
	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Reader
}

// qmpMessage is any message QEMU sends: a greeting, a reply or an event.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP,omitempty"`
	Return json.RawMessage `json:"return,omitempty"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error,omitempty"`
	Event string `json:"event,omitempty"`
}

// NewQMP starts a QMP session on conn, a connection to QEMU's monitor:
// it reads the greeting and enters command mode. It closes conn when it
// fails.
func NewQMP(ctx context.Context, conn net.Conn) (*QMP, error) {
	q := &QMP{conn: conn, r: bufio.NewReader(conn)}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var greeting qmpMessage
	if err := q.read(&greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("QMP greeting: %w", ctxErr(ctx, err))
	}
	if greeting.QMP == nil {
		conn.Close()
		return nil, errors.New("QMP greeting: not a QMP server")
	}
	if _, err := q.Execute(ctx, "qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }

func (q *QMP) read(m *qmpMessage) error {
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return err
	}
	if err := json.Unmarshal(line, m); err != nil {
		return fmt.Errorf("bad QMP message %.200q: %w", line, err)
	}
	return nil
}

// Execute runs a QMP command with arguments (nil for none) and returns its
// "return" value; a QMP error is returned as an error naming the command.
func (q *QMP) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	return q.execute(ctx, command, args, nil)
}

// SendFile hands f to QEMU under name (QMP getfd, the descriptor passed
// with SCM_RIGHTS): commands then refer to it as "fd:name". The
// connection must be a Unix socket.
func (q *QMP) SendFile(ctx context.Context, name string, f *os.File) error {
	_, err := q.execute(ctx, "getfd", map[string]any{"fdname": name}, f)
	return err
}

// execute runs a command, sending f's descriptor with it when f is set.
func (q *QMP) execute(ctx context.Context, command string, args any, f *os.File) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	cmd := map[string]any{"execute": command}
	if args != nil {
		cmd["arguments"] = args
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	if f != nil {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("QMP %s: passing a file needs a Unix socket", command)
		}
		_, _, err = uc.WriteMsgUnix(b, syscall.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = q.conn.Write(b)
	}
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w", command, ctxErr(ctx, err))
	}
	for {
		var m qmpMessage
		if err := q.read(&m); err != nil {
			return nil, fmt.Errorf("QMP %s: %w", command, ctxErr(ctx, err))
		}
		switch {
		case m.Event != "":
			continue
		case m.Error != nil:
			return nil, fmt.Errorf("QMP %s: %s: %s", command, m.Error.Class, m.Error.Desc)
		case m.Return != nil:
			return m.Return, nil
		}
	}
}

// ctxErr prefers ctx's error to the I/O error its deadline caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// WaitMigration polls query-migrate until the migration (outgoing or
// incoming) has completed, and fails when it failed or ctx is done.
func (q *QMP) WaitMigration(ctx context.Context) error {
	for delay := 500 * time.Microsecond; ; delay = min(delay*2, 20*time.Millisecond) {
		raw, err := q.Execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration (%s): %w", st.Status, ctx.Err())
		case <-time.After(delay):
		}
	}
}
