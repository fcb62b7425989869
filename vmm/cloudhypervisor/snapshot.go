package cloudhypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/pe-project/pe/vmm"
)

// Snapshots. cloud-hypervisor's vm.snapshot writes three files into a
// directory: config.json (the VM's configuration, disk paths included),
// memory-ranges (the guest RAM) and state.json (the device state). pe keeps
// the RAM as vmm.SnapshotMemFile and the device state as
// vmm.SnapshotStateFile, like QEMU's, and the configuration as
// SnapshotConfigFile. A restore builds, in the run's work directory, a
// directory in cloud-hypervisor's layout: memory-ranges and state.json
// linked to the snapshot's files, and config.json rewritten with the run's
// disks (a fresh I/O disk) and the serial port on a Unix socket, through
// which pe wakes the guest. It restores with memory_restore_mode=ondemand
// (userfaultfd: pages are read as the guest touches them) and resumes the
// VM through the API.
//
// This is written against cloud-hypervisor's documentation (its
// docs/snapshot_restore.md and API spec); it could not be run where it was
// written (no working KVM, no cloud-hypervisor package): its tests check
// the files, flags and requests it makes.

// Files of cloud-hypervisor's snapshot layout, and pe's name for the
// configuration in a snapshot directory.
const (
	chConfigFile       = "config.json"
	chMemoryFile       = "memory-ranges"
	chStateFile        = "state.json"
	SnapshotConfigFile = "cloud-hypervisor-config.json"
	serialSocketName   = "serial.sock"
)

// Names of the steps of the restore chain.
const (
	StepRestoreArgsName = "cloudhypervisor.RestoreArgs"
	StepResumeName      = "cloudhypervisor.Resume"
)

// RestoreArgs returns cloud-hypervisor's arguments to restore the snapshot
// in sourceDir (its layout) paused, with the API on apiSocket.
func RestoreArgs(sourceDir, apiSocket string) []string {
	return []string{
		"--restore", "source_url=" + value("file://"+sourceDir) + ",memory_restore_mode=ondemand,resume=false",
		"--api-socket", "path=" + value(apiSocket),
	}
}

// RewriteConfig returns a snapshot's config.json with the disks' paths
// replaced by disks' (same number, same order), the serial port on the
// Unix socket serialSocket and a virtio-console on a socket (the data
// channel) on streamSocket. Keys pe does not know are kept.
func RewriteConfig(configJSON []byte, disks []vmm.Disk, serialSocket, streamSocket string) ([]byte, error) {
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(configJSON, &cfg); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", chConfigFile, err)
	}
	var old []map[string]any
	if raw, ok := cfg["disks"]; ok {
		if err := json.Unmarshal(raw, &old); err != nil {
			return nil, fmt.Errorf("snapshot %s: disks: %w", chConfigFile, err)
		}
	}
	if len(old) != len(disks) {
		return nil, fmt.Errorf("snapshot %s: %d disks, the run has %d", chConfigFile, len(old), len(disks))
	}
	for i, d := range disks {
		if ro, _ := old[i]["readonly"].(bool); ro != d.ReadOnly {
			return nil, fmt.Errorf("snapshot %s: disk %d read-only %v, the run's %v", chConfigFile, i, ro, d.ReadOnly)
		}
		old[i]["path"] = d.Path
	}
	b, err := json.Marshal(old)
	if err != nil {
		return nil, err
	}
	cfg["disks"] = b
	if cfg["serial"], err = json.Marshal(map[string]string{"mode": "Socket", "socket": serialSocket}); err != nil {
		return nil, err
	}
	// The socket the snapshot's VM listened on was in its own work
	// directory. A console that was off (a snapshot of an older pe) stays
	// off: the device state must match the devices.
	var console map[string]any
	if raw, ok := cfg["console"]; ok {
		if err := json.Unmarshal(raw, &console); err != nil {
			return nil, fmt.Errorf("snapshot %s: console: %w", chConfigFile, err)
		}
	}
	if mode, _ := console["mode"].(string); mode == "Socket" {
		console["socket"] = streamSocket
		if cfg["console"], err = json.Marshal(console); err != nil {
			return nil, err
		}
	}
	return json.Marshal(cfg)
}

// Version implements vmm.Snapshotter: cloud-hypervisor's version.
func (b *Backend) Version(ctx context.Context) (string, error) {
	path, err := Find(b.Binary)
	if err != nil {
		return "", err
	}
	return Version(ctx, path)
}

// SaveSnapshot implements vmm.Snapshotter: it boots cfg, waits for ready
// in the console file, pauses the VM, snapshots it into dir and ends the
// VMM.
func (b *Backend) SaveSnapshot(ctx context.Context, cfg *vmm.Config, dir string, ready []byte) error {
	c0 := cfg.WithDefaults()
	steps := b.Steps
	if steps == nil {
		steps = b.DefaultSteps()
	}
	var work string
	steps = steps.InsertAfter(vmm.StepWorkDir.Name, vmm.Step{Name: "cloudhypervisor.SnapshotWorkDir", Fn: func(ctx context.Context, l *vmm.Launch) error {
		work = l.WorkDir
		return nil
	}})
	m, err := steps.Run(ctx, &vmm.Launch{Config: c0, VMM: Name, Log: c0.Log})
	if err != nil {
		return err
	}
	defer m.Kill()
	p, ok := m.(*vmm.Process)
	if !ok {
		return errors.New("snapshot: the start-up chain made no VMM process")
	}
	marker := vmm.NewMarkerWriter(ready)
	for {
		marker.Write(p.ConsoleLog())
		select {
		case <-marker.Seen():
		case <-p.Done():
			return fmt.Errorf("waiting for the guest to be ready: the VMM stopped: %v", m.Wait(ctx))
		case <-ctx.Done():
			return fmt.Errorf("waiting for the guest to be ready: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
			continue
		}
		break
	}
	c := NewClient(filepath.Join(work, APISocketName))
	if err := c.Pause(ctx); err != nil {
		return err
	}
	raw := filepath.Join(dir, "cloud-hypervisor")
	if err := os.Mkdir(raw, 0o755); err != nil {
		return err
	}
	if err := c.Snapshot(ctx, "file://"+raw); err != nil {
		return err
	}
	c.ShutdownVMM(ctx)
	m.Kill()
	for from, to := range map[string]string{chMemoryFile: vmm.SnapshotMemFile, chStateFile: vmm.SnapshotStateFile, chConfigFile: SnapshotConfigFile} {
		if err := os.Rename(filepath.Join(raw, from), filepath.Join(dir, to)); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
	}
	return os.RemoveAll(raw)
}

// RestoreSnapshot implements vmm.Snapshotter (see the notes above).
func (b *Backend) RestoreSnapshot(ctx context.Context, cfg *vmm.Config, dir string, wake []byte) (vmm.Machine, error) {
	c := cfg.WithDefaults()
	configJSON, err := os.ReadFile(filepath.Join(dir, SnapshotConfigFile))
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	var serial net.Conn
	steps := vmm.Steps{
		vmm.StepValidate,
		stepRequireKVM,
		b.stepBinary(),
		vmm.StepWorkDir,
		{Name: StepRestoreArgsName, Fn: func(ctx context.Context, l *vmm.Launch) error {
			src := filepath.Join(l.WorkDir, "restore")
			if err := os.Mkdir(src, 0o755); err != nil {
				return err
			}
			sock := filepath.Join(l.WorkDir, serialSocketName)
			cj, err := RewriteConfig(configJSON, l.Config.Disks, sock, filepath.Join(l.WorkDir, StreamSocketName))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(src, chConfigFile), cj, 0o600); err != nil {
				return err
			}
			for from, to := range map[string]string{vmm.SnapshotMemFile: chMemoryFile, vmm.SnapshotStateFile: chStateFile} {
				if err := os.Symlink(filepath.Join(dir, from), filepath.Join(src, to)); err != nil {
					return err
				}
			}
			l.ConsoleFile = filepath.Join(l.WorkDir, ConsoleFileName)
			l.Args = RestoreArgs(src, filepath.Join(l.WorkDir, APISocketName))
			return nil
		}},
		vmm.StepStartProcess,
		stepWaitAPI,
		stepStream,
		vmm.StepBeforeResume,
		{Name: StepResumeName, Fn: func(ctx context.Context, l *vmm.Launch) error {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", filepath.Join(l.WorkDir, serialSocketName))
			if err != nil {
				return fmt.Errorf("serial socket: %w", err)
			}
			serial = conn
			l.OnCleanup(func() { conn.Close() })
			log, err := os.Create(l.ConsoleFile)
			if err != nil {
				return err
			}
			go func() {
				io.Copy(log, conn)
				log.Close()
			}()
			if err := NewClient(filepath.Join(l.WorkDir, APISocketName)).Resume(ctx); err != nil {
				return err
			}
			if _, err := serial.Write(wake); err != nil {
				return fmt.Errorf("waking the guest: %w", err)
			}
			return nil
		}},
	}
	return steps.Run(ctx, &vmm.Launch{Config: c, VMM: Name, Log: c.Log})
}

var _ vmm.Snapshotter = (*Backend)(nil)
