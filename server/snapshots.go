package server

import "github.com/pe-project/pe/engine"

// PresetImages are the presets as the engine's SnapshotPool knows them
// (Config.Snapshots): by name, each with the image it resolves.
func PresetImages(presets []Preset) []engine.PoolImage {
	images := make([]engine.PoolImage, len(presets))
	for i, p := range presets {
		images[i] = engine.PoolImage{Name: p.Name, Image: p.Source}
		if p.Source == "" {
			images[i].Image = p.Name
		}
	}
	return images
}
