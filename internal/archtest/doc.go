// Package archtest holds a test that keeps pe's packages importing each
// other in the direction DESIGN.md §1 and docs/architecture.md draw: from
// the commands down to the formats, never back up. It has no code of its
// own.
package archtest
