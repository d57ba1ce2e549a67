import Foundation
import OperandoCore
import OperandoVirtualCell

/// Warning flags the simulated axes raise, in the protocol's priority order (faults `F…`, then
/// warnings `W…`, then notices `N…`): a reply's warning field shows the first that is set.
enum ZaberWarning: String, CaseIterable, Comparable {
    /// Stalled and stopped (raised by `ZaberSimulator.injectStall`).
    case stalledAndStopped = "FS"
    /// No reference position: set at power-up and by `system reset`, cleared by `home`.
    case noReferencePosition = "WR"
    /// Movement interrupted: a movement was cut short by `stop`, `estop` or another movement
    /// command. Cleared by `warnings clear` or by the next movement command sent while idle.
    case movementInterrupted = "NI"

    static func < (a: ZaberWarning, b: ZaberWarning) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }

    /// Flags that `warnings clear` cannot clear because their condition persists.
    var isCondition: Bool { self == .noReferencePosition }
}

/// Why a command was rejected (the data of an `RJ` reply).
enum ZaberRejection: String, Error {
    case badCommand = "BADCOMMAND"
    case badData = "BADDATA"
    case badAxis = "BADAXIS"
    case deviceOnly = "DEVICEONLY"
    case badMessageID = "BADMESSAGEID"
    case badSplit = "BADSPLIT"
    case statusBusy = "STATUSBUSY"
    case full = "FULL"
}

/// One simulated axis: its settings, where it is, how it moves.
final class SimulatedAxis {
    let spec: ZaberSimulator.Axis
    var limitMin: Int64
    var limitMax: Int64
    var maxspeed: Int64
    var accel: Int64
    var approachSpeed: Int64
    /// Position in microsteps (the axis's own coordinate; exact while resting).
    var position: Double
    var velocity = 0.0
    var profile: MotionProfile?
    var isHoming = false
    var warnings: Set<ZaberWarning> = [.noReferencePosition]
    var storage: [String: String] = [:]

    init(_ spec: ZaberSimulator.Axis) {
        self.spec = spec
        limitMin = spec.limitMin
        limitMax = spec.limitMax
        maxspeed = spec.maxspeed
        accel = spec.accel
        approachSpeed = spec.limitApproachMaxspeed
        position = Double(spec.powerUpPosition)
    }

    var isBusy: Bool { profile != nil }
    var reportedPosition: Int64 { Int64(position.rounded()) }
    var topWarning: ZaberWarning? { warnings.min() }

    /// Moves the axis along its profile up to `now`. Returns true when a movement ended.
    func advance(to now: HostInstant) -> Bool {
        guard let profile else { return false }
        let state = profile.state(at: now)
        position = state.position
        velocity = state.velocity
        guard state.done else { return false }
        self.profile = nil
        velocity = 0
        if isHoming {
            isHoming = false
            position = 0
            warnings.remove(.noReferencePosition)
        }
        return true
    }

    /// Starts a movement to `target`. Interrupting one in progress raises NI; starting from rest
    /// clears an NI left from before.
    func start(to target: Double, speed: Int64, acceleration: Int64, at now: HostInstant, homing: Bool = false) {
        if isBusy { warnings.insert(.movementInterrupted) } else { warnings.remove(.movementInterrupted) }
        profile = MotionProfile.move(
            at: now, from: position, velocity: velocity, to: target,
            maxSpeed: ZaberUnits.microstepsPerSecond(speedData: speed),
            acceleration: ZaberUnits.microstepsPerSecondSquared(accelData: acceleration))
        isHoming = homing
        if profile!.phases.isEmpty { _ = advance(to: now) }
    }

    /// Decelerates to rest (`stop`), or halts at once (`estop`).
    func stop(at now: HostInstant, immediately: Bool) {
        guard isBusy else { return }
        warnings.insert(.movementInterrupted)
        isHoming = false
        if immediately || velocity == 0 {
            profile = MotionProfile(start: now, phases: [], finalPosition: position)
        } else {
            profile = MotionProfile.stop(at: now, from: position, velocity: velocity, acceleration: ZaberUnits.microstepsPerSecondSquared(accelData: accel))
        }
    }
}

/// A command arriving in several packets (`…\`, `cont 1 …\`, …, `cont N …`).
struct SplitCommand {
    var axis: Int
    var id: String?
    var words: [String]
    /// The `cont` index the next packet must carry.
    var next: Int
    /// Already rejected (BADSPLIT): its remaining packets are swallowed without a reply.
    var rejected = false
}

/// One simulated device on the chain.
final class SimulatedDevice {
    let spec: ZaberSimulator.Device
    let chainIndex: Int
    var address: Int
    var axes: [SimulatedAxis]
    var commAlert = false
    var commChecksum = false
    var storage: [String: String] = [:]
    /// A command being received in several packets.
    var split: SplitCommand?

    init(_ spec: ZaberSimulator.Device, chainIndex: Int) {
        self.spec = spec
        self.chainIndex = chainIndex
        address = chainIndex + 1
        axes = spec.axes.map(SimulatedAxis.init)
    }

    /// Back to the power-up state, as after `system reset`: motion stops at once and the position
    /// reference is lost (WR); settings and stored keys are non-volatile and stay.
    func reset() {
        for axis in axes {
            axis.profile = nil
            axis.velocity = 0
            axis.isHoming = false
            axis.position = axis.position.rounded()
            axis.warnings = [.noReferencePosition]
        }
        split = nil
    }
}
