"""What lives in the world: nuScenes categories and attributes, size and colour distributions."""
from __future__ import annotations

import numpy as np

# The full nuScenes v1.0 category tree (23 classes), with the devkit's descriptions shortened.
CATEGORY_TREE: tuple[tuple[str, str], ...] = (
    ("animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", "Adult subclass of pedestrian."),
    ("human.pedestrian.child", "Child subclass of pedestrian."),
    ("human.pedestrian.construction_worker", "Construction worker."),
    ("human.pedestrian.personal_mobility", "A small electric or self-propelled vehicle."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("movable_object.barrier", "Temporary road barrier placed in the scene in order to redirect traffic."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", "All types of traffic cone."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure the bicycles in a row."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle designed to travel at lower speeds."),
    ("vehicle.bus.bendy", "Bendy bus subclass."),
    ("vehicle.bus.rigid", "Rigid bus subclass."),
    ("vehicle.car", "Vehicle designed primarily for personal use, e.g. sedans, hatch-backs, wagons, vans."),
    ("vehicle.construction", "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle."),
    ("vehicle.trailer", "Any vehicle trailer, both for trucks, cars and bikes."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
)

ATTRIBUTE_DESCRIPTIONS: dict[str, str] = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}

VISIBILITY_LEVELS: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)

# Mean and std of (length, width, height) in metres, close to nuScenes statistics.
SIZES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "vehicle.car": ((4.63, 1.96, 1.74), (0.40, 0.15, 0.20)),
    "vehicle.truck": ((6.90, 2.51, 2.85), (1.50, 0.25, 0.50)),
    "vehicle.bus.rigid": ((11.1, 2.95, 3.47), (0.90, 0.10, 0.25)),
    "vehicle.bus.bendy": ((17.0, 2.95, 3.40), (0.80, 0.10, 0.15)),
    "vehicle.trailer": ((10.0, 2.90, 3.85), (2.00, 0.15, 0.35)),
    "vehicle.construction": ((6.40, 2.85, 3.20), (1.00, 0.25, 0.35)),
    "vehicle.motorcycle": ((2.11, 0.77, 1.47), (0.15, 0.08, 0.12)),
    "vehicle.bicycle": ((1.70, 0.60, 1.29), (0.12, 0.06, 0.10)),
    "human.pedestrian.adult": ((0.73, 0.67, 1.76), (0.12, 0.08, 0.09)),
    "human.pedestrian.child": ((0.52, 0.51, 1.32), (0.06, 0.05, 0.10)),
    "human.pedestrian.construction_worker": ((0.75, 0.70, 1.78), (0.10, 0.07, 0.08)),
    "human.pedestrian.police_officer": ((0.74, 0.68, 1.79), (0.08, 0.06, 0.07)),
    "movable_object.trafficcone": ((0.41, 0.41, 1.07), (0.04, 0.04, 0.12)),
    "movable_object.barrier": ((0.50, 2.53, 0.98), (0.08, 0.25, 0.10)),
}

CAR_COLOURS = np.array([
    [0.92, 0.92, 0.92], [0.08, 0.08, 0.09], [0.62, 0.63, 0.66], [0.40, 0.41, 0.43], [0.65, 0.08, 0.07],
    [0.10, 0.20, 0.55], [0.18, 0.32, 0.20], [0.85, 0.75, 0.55], [0.90, 0.55, 0.10], [0.30, 0.15, 0.10],
])
SPECIAL_COLOURS: dict[str, list[list[float]]] = {
    "vehicle.bus.rigid": [[0.95, 0.78, 0.10], [0.80, 0.10, 0.10], [0.15, 0.35, 0.75], [0.92, 0.92, 0.90]],
    "vehicle.bus.bendy": [[0.15, 0.55, 0.30], [0.85, 0.12, 0.10], [0.92, 0.92, 0.90]],
    "vehicle.truck": [[0.92, 0.92, 0.92], [0.20, 0.30, 0.60], [0.70, 0.15, 0.10], [0.30, 0.30, 0.32]],
    "vehicle.trailer": [[0.85, 0.85, 0.85], [0.55, 0.55, 0.58], [0.35, 0.22, 0.15]],
    "vehicle.construction": [[0.95, 0.70, 0.05], [0.90, 0.55, 0.05]],
    "vehicle.motorcycle": [[0.10, 0.10, 0.10], [0.70, 0.05, 0.05], [0.15, 0.25, 0.60]],
    "vehicle.bicycle": [[0.15, 0.15, 0.15], [0.20, 0.45, 0.75], [0.75, 0.20, 0.15], [0.85, 0.85, 0.85]],
    "human.pedestrian.adult": [[0.20, 0.22, 0.35], [0.55, 0.20, 0.20], [0.30, 0.30, 0.30], [0.75, 0.70, 0.60],
                               [0.15, 0.40, 0.25]],
    "human.pedestrian.child": [[0.85, 0.30, 0.30], [0.30, 0.55, 0.85], [0.95, 0.80, 0.20]],
    "human.pedestrian.construction_worker": [[0.98, 0.55, 0.05], [0.90, 0.95, 0.15]],
    "human.pedestrian.police_officer": [[0.08, 0.12, 0.30]],
    "movable_object.trafficcone": [[0.98, 0.42, 0.05]],
    "movable_object.barrier": [[0.90, 0.15, 0.12], [0.95, 0.95, 0.95]],
}


def sample_size(category: str, rng: np.random.Generator) -> np.ndarray:
    mean, std = SIZES[category]
    lwh = np.asarray(mean) + rng.normal(size=3) * np.asarray(std)
    return np.maximum(lwh, np.asarray(mean) * 0.6)


def sample_colour(category: str, rng: np.random.Generator) -> np.ndarray:
    palette = np.asarray(SPECIAL_COLOURS.get(category, CAR_COLOURS))
    base = palette[rng.integers(len(palette))]
    return np.clip(base * rng.uniform(0.85, 1.1) + rng.normal(scale=0.02, size=3), 0, 1)


def attribute_for(category: str, speed: float, parked: bool, ridden: bool) -> str | None:
    """The nuScenes attribute that follows from an object's kinematics."""
    if category.startswith("human.pedestrian"):
        return "pedestrian.moving" if speed > 0.3 else "pedestrian.standing"
    if category in ("vehicle.bicycle", "vehicle.motorcycle"):
        return "cycle.with_rider" if ridden else "cycle.without_rider"
    if category.startswith("vehicle."):
        if speed > 0.5:
            return "vehicle.moving"
        return "vehicle.parked" if parked else "vehicle.stopped"
    return None
