package main

import (
	"io"
	"strings"
	"unicode/utf8"
)

// ANSI colours of table cells.
const (
	colourNone   = ""
	colourGreen  = "\x1b[32m"
	colourRed    = "\x1b[31m"
	colourYellow = "\x1b[33m"
	colourDim    = "\x1b[2m"
	colourReset  = "\x1b[0m"
)

// cell is a table cell: its text and, on a terminal, its colour.
type cell struct {
	text, colour string
}

// writeTable aligns columns by their plain text (colour codes take no width), two
// spaces apart; the last column is not padded.
func writeTable(w io.Writer, header []string, rows [][]cell, colour bool) error {
	widths := make([]int, len(header))
	for i, h := range header {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c.text))
		}
	}
	var b strings.Builder
	line := func(cells []cell) {
		for i, c := range cells {
			text := c.text
			if colour && c.colour != "" {
				text = c.colour + text + colourReset
			}
			b.WriteString(text)
			if i < len(cells)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c.text)+2))
			}
		}
		b.WriteString("\n")
	}
	hs := make([]cell, len(header))
	for i, h := range header {
		hs[i] = cell{text: h}
	}
	line(hs)
	for _, r := range rows {
		line(r)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
