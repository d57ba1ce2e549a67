import OperandoCore

/// A planned movement of one axis: phases of constant acceleration from a start instant.
///
/// Planned once when a command arrives (from the axis's position and velocity at that instant)
/// and evaluated in closed form at any later instant, so the simulated time at which a move ends
/// depends only on the injected clock, never on how often the simulator looks.
struct MotionProfile {
    /// One phase: `duration` seconds starting at `position` (microsteps) with `velocity`
    /// (microsteps/s) under constant `acceleration` (microsteps/s²).
    struct Phase {
        var duration: Double
        var position: Double
        var velocity: Double
        var acceleration: Double

        func position(after t: Double) -> Double { position + velocity * t + 0.5 * acceleration * t * t }
        func velocity(after t: Double) -> Double { velocity + acceleration * t }
    }

    var start: HostInstant
    var phases: [Phase]
    /// Where the axis rests when the profile ends (exact, not integrated).
    var finalPosition: Double

    var duration: Double { phases.reduce(0) { $0 + $1.duration } }
    var end: HostInstant { start.advanced(byNanoseconds: Int64((duration * 1e9).rounded(.up))) }

    /// Position and velocity at `instant`; `done` once the profile has ended.
    func state(at instant: HostInstant) -> (position: Double, velocity: Double, done: Bool) {
        var t = max(0, instant.seconds(since: start))
        for phase in phases {
            if t < phase.duration { return (phase.position(after: t), phase.velocity(after: t), false) }
            t -= phase.duration
        }
        return (finalPosition, 0, true)
    }

    /// A trapezoidal (or triangular) move from `position` at `velocity` to `target`, cruising at
    /// no more than `maxSpeed` and accelerating at `acceleration` (both > 0). When the axis is
    /// moving away from the target, or too fast to stop before it, it first brakes to rest.
    static func move(
        at start: HostInstant, from position: Double, velocity: Double, to target: Double, maxSpeed: Double, acceleration a: Double
    ) -> MotionProfile {
        var phases: [Phase] = []
        var x = position
        var v = velocity
        if v != 0 {
            let stopping = v * v / (2 * a)
            let distance = target - x
            if (distance >= 0) != (v > 0) || stopping > abs(distance) {
                let brake = Phase(duration: abs(v) / a, position: x, velocity: v, acceleration: v > 0 ? -a : a)
                phases.append(brake)
                x = brake.position(after: brake.duration)
                v = 0
            }
        }
        let distance = abs(target - x)
        guard distance > 0 else {
            return MotionProfile(start: start, phases: phases, finalPosition: target)
        }
        let sign: Double = target > x ? 1 : -1
        let u = abs(v)
        // Peak speed: the triangle's apex, capped at the cruise speed (a faster axis slows to it).
        let apex = ((2 * a * distance + u * u) / 2).squareRoot()
        let peak = u > maxSpeed ? maxSpeed : min(maxSpeed, apex)
        let rampDistance = abs(peak * peak - u * u) / (2 * a)
        let brakeDistance = peak * peak / (2 * a)
        let cruise = max(0, distance - rampDistance - brakeDistance)
        let ramp = Phase(duration: abs(peak - u) / a, position: x, velocity: sign * u, acceleration: peak >= u ? sign * a : -sign * a)
        phases.append(ramp)
        x += sign * rampDistance
        if cruise > 0 {
            phases.append(Phase(duration: cruise / peak, position: x, velocity: sign * peak, acceleration: 0))
            x += sign * cruise
        }
        phases.append(Phase(duration: peak / a, position: x, velocity: sign * peak, acceleration: -sign * a))
        return MotionProfile(start: start, phases: phases.filter { $0.duration > 0 }, finalPosition: target)
    }

    /// Braking from `velocity` to rest at `acceleration`.
    static func stop(at start: HostInstant, from position: Double, velocity: Double, acceleration a: Double) -> MotionProfile {
        let brake = Phase(duration: abs(velocity) / a, position: position, velocity: velocity, acceleration: velocity > 0 ? -a : a)
        return MotionProfile(start: start, phases: [brake], finalPosition: brake.position(after: brake.duration))
    }
}

/// Zaber's units for speed and acceleration in the ASCII protocol (protocol manual, "physical
/// units"): speed data = microsteps/s × 1.6384; acceleration data = microsteps/s² × 1.6384 / 10 000.
enum ZaberUnits {
    static func microstepsPerSecond(speedData: Int64) -> Double { Double(speedData) / 1.6384 }
    static func speedData(microstepsPerSecond v: Double) -> Int64 { Int64((v * 1.6384).rounded()) }
    static func microstepsPerSecondSquared(accelData: Int64) -> Double { Double(accelData) * 10_000 / 1.6384 }
}
