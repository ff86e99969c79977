package main

import (
	"fmt"
	"image/color"
	"math"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// plotConverge draws the push round's convergence (p50, p95 and all machines) against
// the fleet size, with the 60 s target, as a PNG at path.
func plotConverge(results []FleetResult, path, subtitle string) error {
	type point struct{ n, p50, p95, max, floor float64 }
	var pts []point
	for _, r := range results {
		for _, rd := range r.Rounds {
			if rd.Name == "push" && r.Error == "" {
				// No operator can beat ⌈N/concurrency⌉ builds in a row.
				waves := math.Ceil(float64(r.Machines) / float64(max(r.Concurrency, 1)))
				pts = append(pts, point{float64(r.Machines), rd.Converge.P50, rd.Converge.P95, rd.Converge.Max, waves * r.BuildTimeSeconds})
			}
		}
	}
	if len(pts) == 0 {
		return fmt.Errorf("no completed push round to plot")
	}
	sort.Slice(pts, func(i, j int) bool { return pts[i].n < pts[j].n })
	p := plot.New()
	p.Title.Text = "NIO: one push → every Machine's appliedCommit updated\n" + subtitle
	p.Title.TextStyle.Font.Size = vg.Points(12)
	p.X.Label.Text = "machines (log scale)"
	p.Y.Label.Text = "seconds from webhook to appliedCommit"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true

	series := []struct {
		name string
		pick func(point) float64
		c    color.Color
		dash []vg.Length
	}{
		{"all machines (max)", func(p point) float64 { return p.max }, color.RGBA{R: 200, A: 255}, nil},
		{"p95 of machines", func(p point) float64 { return p.p95 }, color.RGBA{R: 230, G: 140, A: 255}, []vg.Length{vg.Points(4), vg.Points(2)}},
		{"p50 of machines", func(p point) float64 { return p.p50 }, color.RGBA{B: 200, A: 255}, []vg.Length{vg.Points(1), vg.Points(2)}},
		{"floor: ceil(N / concurrency) × build time", func(p point) float64 { return p.floor }, color.RGBA{G: 150, A: 255}, []vg.Length{vg.Points(2), vg.Points(3)}},
	}
	ymax := 60.0
	for _, s := range series {
		xy := make(plotter.XYs, len(pts))
		for i, pt := range pts {
			xy[i] = plotter.XY{X: pt.n, Y: s.pick(pt)}
			ymax = max(ymax, s.pick(pt))
		}
		line, points, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		line.Color, line.Width, line.Dashes = s.c, vg.Points(2), s.dash
		points.Color, points.Shape = s.c, draw.CircleGlyph{}
		p.Add(line, points)
		p.Legend.Add(s.name, line, points)
	}
	xmin, xmax := pts[0].n/1.5, pts[len(pts)-1].n*1.5
	target, err := plotter.NewLine(plotter.XYs{{X: xmin, Y: 60}, {X: xmax, Y: 60}})
	if err != nil {
		return err
	}
	target.Color, target.Dashes = color.Gray{Y: 90}, []vg.Length{vg.Points(6), vg.Points(4)}
	p.Add(target)
	p.Legend.Add("target: 1000 machines ≤ 60 s", target)
	var labels plotter.XYLabels
	for _, pt := range pts {
		labels.XYs = append(labels.XYs, plotter.XY{X: pt.n, Y: pt.max})
		labels.Labels = append(labels.Labels, fmt.Sprintf(" %.1f s", pt.max))
	}
	if l, err := plotter.NewLabels(labels); err == nil {
		p.Add(l)
	}
	// Headroom above the data for the legend.
	p.Y.Min, p.Y.Max = 0, ymax*1.45
	p.X.Min, p.X.Max = xmin, xmax
	return p.Save(9*vg.Inch, 5.5*vg.Inch, path)
}
