package vmm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/pe-project/pe/vmm/jail"
)

// Launch is the state a [Steps] chain builds up while starting one machine.
type Launch struct {
	// Config is the machine's configuration, defaults applied.
	Config *Config
	// VMM is the backend's name, for messages.
	VMM string
	// Binary is the VMM executable and Args its arguments (without
	// argv[0]); the argument step fills Args.
	Binary string
	Args   []string
	// WorkDir is where the backend's files go: Config.WorkDir, or a
	// temporary directory the work-directory step made.
	WorkDir string
	// ConsoleFile, when set, is a file the VMM writes the guest console to
	// (instead of its standard output); the machine reads its end.
	ConsoleFile string
	// Stdin, when set, is the VMM's standard input (else /dev/null): a
	// pipe through which pe writes to the guest's serial console.
	Stdin io.Reader
	// ExtraFiles are open files the VMM inherits as descriptors 3, 4 and
	// so on.
	ExtraFiles []*os.File
	// Jail, when set, confines the VMM (see package jail): StartProcess
	// runs it through the trampoline, with Binary and Args copied into it.
	Jail *jail.Spec
	// Machine is set by the step that starts the VMM.
	Machine Machine
	// Log receives debug messages.
	Log *slog.Logger

	cleanups []func()
}

// OnCleanup registers f to run when the machine is gone: after its process
// has exited, or at once if a later step fails. Cleanups run last
// registered first.
func (l *Launch) OnCleanup(f func()) { l.cleanups = append(l.cleanups, f) }

// cleanup runs and forgets the registered cleanups.
func (l *Launch) cleanup() {
	for i := len(l.cleanups) - 1; i >= 0; i-- {
		l.cleanups[i]()
	}
	l.cleanups = nil
}

// takeCleanups hands the cleanups over to the machine.
func (l *Launch) takeCleanups() []func() {
	c := l.cleanups
	l.cleanups = nil
	return c
}

// Step is one named stage of starting a machine.
type Step struct {
	// Name identifies the step, "qemu.Args" for instance.
	Name string
	// Fn does the work. A step that creates something registers its
	// removal with Launch.OnCleanup.
	Fn func(ctx context.Context, l *Launch) error
}

// Steps is an ordered chain of steps. The editing methods return a new
// chain and leave the receiver unchanged.
type Steps []Step

// Has reports whether the chain has a step called name.
func (s Steps) Has(name string) bool { return s.index(name) >= 0 }

func (s Steps) index(name string) int {
	return slices.IndexFunc(s, func(st Step) bool { return st.Name == name })
}

// Append returns the chain with steps added at the end.
func (s Steps) Append(steps ...Step) Steps { return append(slices.Clip(s), steps...) }

// Prepend returns the chain with steps added at the start.
func (s Steps) Prepend(steps ...Step) Steps { return append(slices.Clip(steps), s...) }

// InsertAfter returns the chain with step inserted after the step called
// name, or appended when there is none.
func (s Steps) InsertAfter(name string, step Step) Steps {
	i := s.index(name)
	if i < 0 {
		return s.Append(step)
	}
	return slices.Insert(slices.Clone(s), i+1, step)
}

// Replace returns the chain with the step called name replaced by step,
// or appended when there is none.
func (s Steps) Replace(name string, step Step) Steps {
	i := s.index(name)
	if i < 0 {
		return s.Append(step)
	}
	out := slices.Clone(s)
	out[i] = step
	return out
}

// Remove returns the chain without the step called name.
func (s Steps) Remove(name string) Steps {
	return slices.DeleteFunc(slices.Clone(s), func(st Step) bool { return st.Name == name })
}

// Names lists the steps' names in order.
func (s Steps) Names() []string {
	names := make([]string, len(s))
	for i, st := range s {
		names[i] = st.Name
	}
	return names
}

// Run runs the steps in order and returns the machine the chain started.
// When a step fails, or none started a machine, the cleanups registered so
// far run and the error names the step.
func (s Steps) Run(ctx context.Context, l *Launch) (m Machine, err error) {
	if l.Log == nil {
		l.Log = slog.New(slog.DiscardHandler)
	}
	defer func() {
		if err != nil {
			if l.Machine != nil {
				l.Machine.Kill()
			}
			l.cleanup()
		}
	}()
	for _, st := range s {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("starting %s: %w", l.VMM, err)
		}
		t := time.Now()
		if err := st.Fn(ctx, l); err != nil {
			return nil, fmt.Errorf("starting %s: %s: %w", l.VMM, st.Name, err)
		}
		took := time.Since(t)
		l.Log.Debug("vmm step done", "step", st.Name, "took", took)
		if l.Config != nil && l.Config.OnStep != nil {
			l.Config.OnStep(st.Name, took)
		}
	}
	if l.Machine == nil {
		return nil, fmt.Errorf("starting %s: no step started the VMM", l.VMM)
	}
	return l.Machine, nil
}

// StepValidate checks the configuration (see Config.Validate).
var StepValidate = Step{Name: "vmm.Validate", Fn: func(ctx context.Context, l *Launch) error {
	if err := l.Config.Validate(); err != nil {
		return err
	}
	for _, p := range []string{l.Config.Kernel, l.Config.Initramfs} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return err
		}
	}
	for _, d := range l.Config.Disks {
		if d.NBD != nil {
			continue // a socket, no file
		}
		if _, err := os.Stat(d.Path); err != nil {
			return fmt.Errorf("disk: %w", err)
		}
	}
	return nil
}}

// StepWorkDir sets Launch.WorkDir: Config.WorkDir, or a new temporary
// directory removed with the machine.
var StepWorkDir = Step{Name: "vmm.WorkDir", Fn: func(ctx context.Context, l *Launch) error {
	if l.Config.WorkDir != "" {
		l.WorkDir = l.Config.WorkDir
		return nil
	}
	dir, err := os.MkdirTemp("", "pe-vm-")
	if err != nil {
		return err
	}
	l.WorkDir = dir
	l.OnCleanup(func() { os.RemoveAll(dir) })
	return nil
}}

// StepBeforeResume calls Config.BeforeResume, when set: a restore's step
// between loading the snapshot's state and resuming the guest.
var StepBeforeResume = Step{Name: "vmm.BeforeResume", Fn: func(ctx context.Context, l *Launch) error {
	if l.Config.BeforeResume == nil {
		return nil
	}
	return l.Config.BeforeResume(ctx)
}}

// StepStartProcess starts Launch.Binary with Launch.Args as the machine
// (see StartProcess).
var StepStartProcess = Step{Name: "vmm.StartProcess", Fn: func(ctx context.Context, l *Launch) error {
	m, err := StartProcess(l)
	if err != nil {
		return err
	}
	l.Machine = m
	return nil
}}
