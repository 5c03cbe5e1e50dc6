//! The procedural shapes dataset and its adherence checker: the checker must read back every rendered scene
//! (including jittered ones) exactly, and held-out scenes never appear in the training set.

use sd_train::shapes::{dataset, held_out_scenes, read, validation_scenes, Scene, COLOURS, POSITIONS, SHAPES};

#[test]
fn checker_reads_every_scene_back() {
    let mut gen = sd_core::TorchGenerator::new(3);
    let mut wrong = Vec::new();
    for n in 0..450 {
        let scene = Scene::nth(n);
        for (k, img) in [scene.render(32, None), scene.render(32, Some(&mut gen)), scene.render(64, Some(&mut gen))]
            .iter()
            .enumerate()
        {
            let r = read(img);
            let ok =
                r.is_some_and(|r| r.shape == scene.shape && r.colour == scene.colour && r.position == scene.position);
            if !ok {
                wrong.push(format!("{} (variant {k}) read as {r:?}", scene.caption()));
            }
        }
    }
    assert!(wrong.is_empty(), "{} misreadings, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
}

/// The validation prompts (for choosing the guidance scale) are 50 distinct training captions, none held out.
#[test]
fn validation_scenes_are_training_captions() {
    let held: Vec<String> = held_out_scenes().iter().map(Scene::caption).collect();
    let val: std::collections::BTreeSet<String> = validation_scenes().iter().map(Scene::caption).collect();
    assert_eq!(val.len(), 50);
    let trained: std::collections::BTreeSet<String> = sd_train::shapes::training_captions().into_iter().collect();
    assert!(
        val.iter().all(|c| trained.contains(c) && !held.contains(c)),
        "a validation caption is held out or untrained"
    );
}

#[test]
fn held_out_scenes_are_not_trained_on() {
    let held: Vec<String> = held_out_scenes().iter().map(Scene::caption).collect();
    assert_eq!(held.len(), 50);
    let ds = dataset("procedural:shapes", 32, 0).expect("dataset");
    assert_eq!(ds.len(), 400);
    assert!(ds.examples.iter().all(|e| !held.contains(&e.caption)), "a held-out caption is in the training set");
    let first = Scene::nth(0);
    if !held.contains(&first.caption()) {
        assert_eq!(
            ds.examples[0].caption,
            format!("a {} {} on a {} background, {}", COLOURS[0].0, SHAPES[0], COLOURS[1].0, POSITIONS[0])
        );
    }
    // The held-out set covers every shape, colour and position.
    let scenes = held_out_scenes();
    for (k, shape) in SHAPES.iter().enumerate() {
        assert!(scenes.iter().any(|s| s.shape == k), "no held-out {shape}");
    }
    for (k, colour) in COLOURS.iter().enumerate() {
        assert!(scenes.iter().any(|s| s.colour == k), "no held-out {} shape", colour.0);
    }
    for (k, position) in POSITIONS.iter().enumerate() {
        assert!(scenes.iter().any(|s| s.position == k), "no held-out scene at {position}");
    }
    assert!(dataset("procedural:circles", 32, 0).is_err());
    assert_eq!(dataset("procedural:shapes:7", 16, 0).expect("7").len(), 7);
}
