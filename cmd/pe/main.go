// Command pe runs programs from OCI container images in micro-VMs. The
// commands live in package cli; main only wires signals and the exit status.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/pe-project/pe/cmd/pe/cli"
)

func main() {
	// The first SIGINT or SIGTERM cancels ctx (pe run forwards it to its
	// program first); after that, one more kills pe at once.
	ctx, stop := cli.NotifyContext(context.Background())
	context.AfterFunc(ctx, stop)
	err := cli.New().ExecuteContext(ctx)
	var status *cli.ExitStatus
	switch {
	case errors.As(err, &status):
		os.Exit(status.Code) // pe run: the program's status
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		err = errors.New("interrupted")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pe: %v\n", err)
		os.Exit(125) // pe itself failed (DESIGN.md §3)
	}
}
