// Package cli holds the commands of the pe command-line tool, built with
// cobra. Each command parses its flags and arguments and calls a library
// package (image, erofs, engine) to do the work; New assembles them under the root
// command so that tests can run pe in-process.
//
// Errors are returned, never printed: the caller (pe's main) prints them as
// one line, "pe: <reason>", and exits with status 125.
package cli
