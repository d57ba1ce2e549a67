import Foundation
import OperandoCore
import OperandoVirtualCell

/// A daisy chain of Zaber motion devices speaking the ASCII protocol from the device side, served
/// over one byte stream (a pseudo-terminal, a TCP connection or an in-memory link).
///
/// Written from the public protocol description (shared/protocols/zaber-ascii.md: the Zaber ASCII
/// protocol manual, zproto's packet grammar, what zaber-motion 10.x sends), independently of
/// ZaberDriver, so each checks the other. What it does, and the choices made where the public
/// description is silent:
///
/// - Commands `/[device] [axis] [id] command args[\][:CC]` ending `\r`, `\n` or both. Device 0
///   addresses every device and each answers in chain order; axis 0 is the whole device. Message
///   ids (0…99) are echoed verbatim. Bytes outside a packet are ignored; a packet with a control
///   or non-ASCII byte is discarded, as is one longer than 1024 bytes (lenient: real devices stop
///   at comm.packet.size.max).
/// - Checksums: a command's `:CC` is verified when present; a wrong one gets `RJ … BADDATA` from
///   each addressed device (chosen: the public material does not say whether a device rejects or
///   ignores it; a rejection lets a host fail fast instead of timing out). Replies carry `:CC`
///   only when `comm.checksum` is 1 (default 0).
/// - Split commands: a packet ending `\` is continued by `cont 1`, `cont 2`, … packets with the
///   same axis and id; the device answers once, to the last. A command announcing more packets
///   than `comm.command.packets.max` (5) is rejected with BADSPLIT as soon as that is clear, and
///   its remaining packets are swallowed; a continuation that continues nothing (wrong index,
///   axis or id) is rejected with BADSPLIT.
/// - Long replies: a reply longer than `comm.packet.size.max` (80) is split between words; every
///   packet but the last ends with `\` and the rest follows as `#DD A id cont …` info packets.
///   `storage get` of a long value is the realistic case.
/// - Replies `@DD A [id] OK|RJ IDLE|BUSY FLAG data`; data is `0` when a command returns none.
///   Rejection reasons: BADCOMMAND (unknown command or setting, or `set` of a read-only
///   setting), BADDATA (bad or missing argument, target outside limit.min…limit.max, bad
///   checksum, missing storage key), BADAXIS (axis beyond the device's axes; the reply names
///   the axis asked for, as zaber-motion expects), DEVICEONLY (device-scope setting or command
///   sent to an axis), BADMESSAGEID (id over 99), BADSPLIT,
///   STATUSBUSY (`set pos` while moving), FULL (storage over 2048 characters). AGAIN is never
///   produced: nothing here is transiently unable to run a command.
/// - Warning flags (the reply's flag field shows the highest-priority one, in the protocol
///   manual's order: faults F…, then warnings W…, then notices N…; `warnings` lists them as
///   `NN F1 F2…`, `warnings clear` lists then clears them): WR (no reference position) from
///   power-up and `system reset` until `home` completes (`warnings clear` cannot clear it; `set
///   pos` leaves it); NI (movement interrupted) when `stop`, `estop` or a new movement cuts a
///   movement short, cleared by the next movement started from rest or by `warnings clear`; FS
///   when `injectStall` says so. NI is not "not homed": that is WR. Moves are allowed before
///   homing, within limit.min…limit.max.
/// - Motion: trapezoidal profiles planned from the axis's state when the command arrives, using
///   maxspeed and accel in Zaber's units (speed data = µsteps/s × 1.6384, accel data =
///   µsteps/s² × 1.6384 / 10 000), evaluated against the injected clock. `home` travels to 0 at
///   min(maxspeed, limit.approach.maxspeed), then clears WR. `move abs|rel|min|max` take an
///   optional speed and accel (`rel` counts from where the axis is when the command arrives);
///   `move vel V [accel]` stops at limit.min/limit.max without a flag, as a device stops at the
///   end of travel; `stop` decelerates, `estop` halts at once. A move of zero length replies IDLE
///   and sends no alert. The simulator knows where the carriage is at power-up
///   (`powerUpPosition`) and reports it as pos; a real device reports positions relative to where
///   it powered up until it is homed.
/// - `encoder.pos` is pos plus Gaussian noise (`encoderNoiseCounts`, reproducible from `seed`).
/// - Alerts `!DD A IDLE FLAG` when an axis comes to rest and `comm.alert` is 1.
/// - `get X` on axis 0 of an axis setting returns one value per axis; `set X v` on axis 0 sets
///   every axis. Legacy names `deviceid` and `peripheralid` (which zaber-motion asks for) are
///   accepted beside `device.id` and `peripheral.id`. `get.settings.max` is rejected
///   (BADCOMMAND), as on firmware before 7.35, so clients read one setting per command.
/// - Also: `tools echo`, `renumber` (chain positions), `renumber N` (to device 0: number the chain
///   from N, as zaber-motion's renumber_devices asks; to one device: that address), `system reset`,
///   `storage [axis] set|append|get|erase|exists|clear|print [keys] [prefix P]` (non-volatile
///   key/value text per device and per axis; `print` answers `#… set KEY [VALUE]` info messages
///   after the reply, a form zaber-motion's key listing accepts).
///
/// Threading: `serve` runs on one thread; `receive`, `poll` and the fault hooks may be called
/// from others (a lock serialises them).
public final class ZaberSimulator: @unchecked Sendable {
    /// One axis of a simulated device.
    public struct Axis: Sendable {
        /// Travel limits in microsteps (`limit.min`, `limit.max`).
        public var limitMin: Int64
        public var limitMax: Int64
        /// Microstep size in micrometres (not on the wire: zaber-motion takes it from its device
        /// database; kept here so simulations can convert to physical units).
        public var microstepSizeMicrometres: Double
        /// Microsteps per full step (`resolution`).
        public var resolution: Int
        /// Default `maxspeed`, `accel` and `limit.approach.maxspeed` in Zaber's data units.
        public var maxspeed: Int64
        public var accel: Int64
        public var limitApproachMaxspeed: Int64
        /// Where the carriage is at power-up, in microsteps.
        public var powerUpPosition: Int64
        /// The peripheral id of the stage on a controller's axis; nil for an integrated device,
        /// which rejects `get peripheral.id` with BADCOMMAND like integrated X-series stages.
        public var peripheralID: Int?
        public var peripheralSerial: Int
        /// Standard deviation of `encoder.pos` around `pos`, in encoder counts.
        public var encoderNoiseCounts: Double

        public init(
            limitMin: Int64 = 0, limitMax: Int64, microstepSizeMicrometres: Double, resolution: Int = 64,
            maxspeed: Int64, accel: Int64, limitApproachMaxspeed: Int64, powerUpPosition: Int64 = 0,
            peripheralID: Int? = nil, peripheralSerial: Int = 0, encoderNoiseCounts: Double = 1
        ) {
            self.limitMin = limitMin
            self.limitMax = limitMax
            self.microstepSizeMicrometres = microstepSizeMicrometres
            self.resolution = resolution
            self.maxspeed = maxspeed
            self.accel = accel
            self.limitApproachMaxspeed = limitApproachMaxspeed
            self.powerUpPosition = powerUpPosition
            self.peripheralID = peripheralID
            self.peripheralSerial = peripheralSerial
            self.encoderNoiseCounts = encoderNoiseCounts
        }

        /// A 100 mm lead-screw linear stage with 0.047625 µm microsteps (X-LSM100A-like kinematics):
        /// 2 099 737 microsteps of travel, maxspeed 153 600 (≈ 4.5 mm/s), accel 205
        /// (≈ 60 mm/s²), powering up 1 mm from home.
        public static func linearStage100mm() -> Axis {
            Axis(
                limitMax: 2_099_737, microstepSizeMicrometres: 0.047625, maxspeed: 153_600, accel: 205,
                limitApproachMaxspeed: 153_600, powerUpPosition: 20_997)
        }
    }

    /// One device on the chain.
    public struct Device: Sendable {
        /// `device.id` (alias `deviceid`): the product's id in Zaber's device database.
        public var deviceID: Int
        /// `system.serial`.
        public var serialNumber: Int
        /// `version` and `version.build`.
        public var firmwareVersion: String
        public var firmwareBuild: Int
        public var axes: [Axis]
        /// `comm.packet.size.max`, `comm.command.packets.max`, `comm.word.size.max`.
        public var packetSizeMax: Int
        public var commandPacketsMax: Int
        public var wordSizeMax: Int

        public init(
            deviceID: Int, serialNumber: Int, firmwareVersion: String = "7.33", firmwareBuild: Int = 14091, axes: [Axis],
            packetSizeMax: Int = 80, commandPacketsMax: Int = 5, wordSizeMax: Int = 50
        ) {
            self.deviceID = deviceID
            self.serialNumber = serialNumber
            self.firmwareVersion = firmwareVersion
            self.firmwareBuild = firmwareBuild
            self.axes = axes
            self.packetSizeMax = packetSizeMax
            self.commandPacketsMax = commandPacketsMax
            self.wordSizeMax = wordSizeMax
        }

        /// A single-axis integrated linear stage. Device id 50081 and firmware 7.33 build 14091 are
        /// the ids of a single-axis X-series linear stage (X-LHM) used in public zaber-motion test
        /// fixtures; the kinematics are `Axis.linearStage100mm()`'s. Only a device database (not
        /// reachable offline) would relate the id to a microstep size.
        public static func linearStage(serialNumber: Int) -> Device {
            Device(deviceID: 50081, serialNumber: serialNumber, axes: [.linearStage100mm()])
        }
    }

    /// `count` single-axis linear stages, serial numbers 123450, 123451, …
    public static func standard(count: Int) -> [Device] {
        (0..<max(0, count)).map { Device.linearStage(serialNumber: 123_450 + $0) }
    }

    /// Longest packet accepted (bytes between `/` and the terminator).
    static let maxAcceptedPacket = 1024
    /// Characters of stored text a device or axis may hold.
    static let storageCapacity = 2048

    private let clock: any HostClock
    private let lock = NSLock()
    private let chain: [SimulatedDevice]
    private var assembler = PacketAssembler(maxLength: ZaberSimulator.maxAcceptedPacket)
    private var noise: NoiseSource

    /// A chain of `devices` (first = nearest the host, address 1), timed by `clock`; `seed` makes
    /// the encoder noise reproducible.
    public init(devices: [Device], clock: any HostClock, seed: UInt64 = 1) {
        self.clock = clock
        chain = devices.enumerated().map { SimulatedDevice($1, chainIndex: $0) }
        noise = NoiseSource(seed: seed)
    }

    /// Serves the device end of `link` until `shouldStop` returns true or the link goes away
    /// (its read or write throws). The chain keeps its state, so calling `serve` again (a new
    /// client) continues where it left off, as powered devices do.
    public func serve(_ link: any ByteStreamTransport, shouldStop: () -> Bool) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !shouldStop() {
            do {
                let timeout: Duration = isMoving ? .milliseconds(5) : .milliseconds(50)
                let read = try buffer.withUnsafeMutableBytes { try link.read(into: $0, timeout: timeout) }
                var out = read.count > 0 ? receive(buffer[0..<read.count]) : []
                out += poll()
                if !out.isEmpty { try out.withUnsafeBytes { try link.write($0, timeout: .seconds(1)) } }
            } catch {
                return
            }
        }
    }

    /// Feeds bytes from the host as if they arrived now (by the injected clock) and returns what
    /// the chain sends back: alerts for movements that ended before now, then the replies.
    public func receive<S: Sequence>(_ bytes: S) -> [UInt8] where S.Element == UInt8 {
        lock.lock()
        defer { lock.unlock() }
        var out: [String] = []
        for byte in bytes {
            guard let content = assembler.feed(byte) else { continue }
            let now = clock.now()
            out += advance(to: now)
            out += process(content, now: now)
        }
        return Array(out.joined().utf8)
    }

    /// Advances every axis to now (by the injected clock) and returns the alerts of movements that
    /// ended (when comm.alert is 1).
    public func poll() -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        return Array(advance(to: clock.now()).joined().utf8)
    }

    /// True while any axis is moving.
    public var isMoving: Bool {
        lock.lock()
        defer { lock.unlock() }
        return chain.contains { $0.axes.contains(where: \.isBusy) }
    }

    /// The position (microsteps, as `get pos` reports it) of `axis` (1-based) of the device at
    /// `chainIndex` (0-based), at the last instant the simulator looked.
    public func position(chainIndex: Int, axis: Int) -> Int64 {
        lock.lock()
        defer { lock.unlock() }
        return chain[chainIndex].axes[axis - 1].reportedPosition
    }

    /// Fault injection: the axis stalls now: it halts and raises FS (stalled and stopped).
    public func injectStall(chainIndex: Int, axis: Int) {
        lock.lock()
        defer { lock.unlock() }
        let a = chain[chainIndex].axes[axis - 1]
        _ = a.advance(to: clock.now())
        a.profile = a.isBusy ? MotionProfile(start: clock.now(), phases: [], finalPosition: a.position) : nil
        a.isHoming = false
        a.warnings.insert(.stalledAndStopped)
    }

    // MARK: - Chain

    private func advance(to now: HostInstant) -> [String] {
        var out: [String] = []
        for device in chain {
            for (index, axis) in device.axes.enumerated() {
                guard axis.advance(to: now), device.commAlert else { continue }
                let alert = DeviceMessage(
                    kind: .alert, device: device.address, axis: index + 1, status: "IDLE",
                    warning: axis.topWarning?.rawValue ?? "--", data: "")
                out += encode(alert, for: device)
            }
        }
        return out
    }

    private func process(_ content: [UInt8], now: HostInstant) -> [String] {
        let packet = CommandPacket.parse(content)
        var out: [String] = []
        for device in chain where packet.device == 0 || packet.device == device.address {
            for message in execute(packet, on: device, now: now) { out += encode(message, for: device) }
        }
        return out
    }

    private func encode(_ message: DeviceMessage, for device: SimulatedDevice) -> [String] {
        message.encode(maxPacketSize: device.spec.packetSizeMax, checksum: device.commChecksum)
    }

    // MARK: - One device's command handling

    private struct Context {
        let device: SimulatedDevice
        /// The command went to device 0 (every device).
        let broadcast: Bool
        let axis: Int
        let id: String?
        let now: HostInstant

        /// The axes the command addresses: all of them for axis 0 (and, for the status and flag of
        /// a BADAXIS rejection, for an axis the device does not have).
        var targets: [SimulatedAxis] { axis == 0 || axis > device.axes.count ? device.axes : [device.axes[axis - 1]] }
    }

    private func execute(_ packet: CommandPacket, on device: SimulatedDevice, now: HostInstant) -> [DeviceMessage] {
        let context = Context(device: device, broadcast: packet.device == 0, axis: packet.axis, id: packet.messageID, now: now)
        if packet.checksum == .invalid { return [reject(.badData, context)] }
        if packet.badMessageID { return [reject(.badMessageID, context)] }
        guard packet.axis <= device.axes.count else {
            device.split = nil
            return [reject(.badAxis, context)]
        }
        var words = packet.words
        if let index = packet.continuationIndex {
            guard var split = device.split, split.axis == packet.axis, split.id == packet.messageID, split.next == index else {
                device.split = nil
                return [reject(.badSplit, context)]
            }
            device.split = nil
            if split.rejected {
                // The rest of a command already rejected: swallow it quietly.
                if packet.continues {
                    split.next += 1
                    device.split = split
                }
                return []
            }
            words = split.words + packet.words.dropFirst(2)
            if packet.continues {
                split.words = words
                split.next += 1
                if split.next + 1 > device.spec.commandPacketsMax {
                    split.rejected = true
                    device.split = split
                    return [reject(.badSplit, context)]
                }
                device.split = split
                return []
            }
        } else {
            device.split = nil
            if packet.continues {
                var split = SplitCommand(axis: packet.axis, id: packet.messageID, words: words, next: 1)
                if device.spec.commandPacketsMax < 2 {
                    split.rejected = true
                    device.split = split
                    return [reject(.badSplit, context)]
                }
                device.split = split
                return []
            }
        }
        do {
            return try dispatch(words, context)
        } catch {
            return [reject(error, context)]
        }
    }

    private func dispatch(_ words: [String], _ c: Context) throws(ZaberRejection) -> [DeviceMessage] {
        guard let command = words.first else { return [ok(c)] }
        switch command {
        case "home":
            guard words.count == 1 else { throw .badData }
            for axis in c.targets {
                axis.start(to: 0, speed: min(axis.maxspeed, axis.approachSpeed), acceleration: axis.accel, at: c.now, homing: true)
            }
            return [ok(c)]
        case "move":
            try move(Array(words.dropFirst()), c)
            return [ok(c)]
        case "stop", "estop":
            guard words.count == 1 else { throw .badData }
            for axis in c.targets { axis.stop(at: c.now, immediately: command == "estop") }
            return [ok(c)]
        case "get":
            guard words.count == 2 else { throw .badData }
            return [ok(c, data: try get(words[1], c))]
        case "set":
            guard words.count == 3 else { throw .badData }
            try set(words[1], to: words[2], c)
            return [ok(c)]
        case "warnings":
            return [ok(c, data: try warnings(Array(words.dropFirst()), c))]
        case "tools":
            guard words.count >= 2, words[1] == "echo" else { throw .badCommand }
            return [ok(c, data: words.count > 2 ? words[2...].joined(separator: " ") : "0")]
        case "renumber":
            guard c.axis == 0 else { throw .deviceOnly }
            if words.count == 1 {
                c.device.address = c.device.chainIndex + 1
            } else if words.count == 2, let n = Int(words[1]), (1...99).contains(n) {
                // To every device: number the chain from n (zaber-motion's renumber_devices sends
                // `renumber 1` to device 0); to one device: give it address n.
                let address = c.broadcast ? n + c.device.chainIndex : n
                guard address <= 99 else { throw .badData }
                c.device.address = address
            } else {
                throw .badData
            }
            return [ok(c)]
        case "system":
            guard words.count == 2, words[1] == "reset" else { throw (words.count == 2 ? ZaberRejection.badCommand : .badData) }
            guard c.axis == 0 else { throw .deviceOnly }
            let reply = ok(c)
            c.device.reset()
            return [reply]
        case "storage":
            return try storage(Array(words.dropFirst()), c)
        default:
            throw .badCommand
        }
    }

    private func ok(_ c: Context, data: String = "0") -> DeviceMessage {
        DeviceMessage(kind: .reply, device: c.device.address, axis: c.axis, messageID: c.id, flag: "OK", status: status(c), warning: warningFlag(c), data: data)
    }

    private func reject(_ reason: ZaberRejection, _ c: Context) -> DeviceMessage {
        DeviceMessage(
            kind: .reply, device: c.device.address, axis: c.axis, messageID: c.id, flag: "RJ", status: status(c), warning: warningFlag(c),
            data: reason.rawValue)
    }

    private func status(_ c: Context) -> String {
        c.targets.contains(where: \.isBusy) ? "BUSY" : "IDLE"
    }

    private func warningFlag(_ c: Context) -> String {
        c.targets.compactMap(\.topWarning).min()?.rawValue ?? "--"
    }

    // MARK: Motion commands

    private func move(_ args: [String], _ c: Context) throws(ZaberRejection) {
        guard let kind = args.first else { throw .badData }
        func integer(_ index: Int) throws(ZaberRejection) -> Int64? {
            guard index < args.count else { return nil }
            guard let v = Int64(args[index]) else { throw .badData }
            return v
        }
        func positive(_ index: Int) throws(ZaberRejection) -> Int64? {
            guard let v = try integer(index) else { return nil }
            guard v > 0 else { throw .badData }
            return v
        }
        switch kind {
        case "abs", "rel", "min", "max":
            let takesPosition = kind == "abs" || kind == "rel"
            let first = takesPosition ? 2 : 1
            guard args.count >= first, args.count <= first + 2 else { throw .badData }
            let value = takesPosition ? try integer(1)! : 0
            let speed = try positive(first)
            let accel = try positive(first + 1)
            let plans = try c.targets.map { (axis) throws(ZaberRejection) -> (SimulatedAxis, Int64) in
                let target: Int64
                switch kind {
                case "abs": target = value
                case "rel": target = axis.reportedPosition + value
                case "min": target = axis.limitMin
                default: target = axis.limitMax
                }
                guard target >= axis.limitMin && target <= axis.limitMax else { throw .badData }
                return (axis, target)
            }
            for (axis, target) in plans {
                axis.start(to: Double(target), speed: speed ?? axis.maxspeed, acceleration: accel ?? axis.accel, at: c.now)
            }
        case "vel":
            guard args.count == 2 || args.count == 3, let velocity = try integer(1) else { throw .badData }
            let accel = try positive(2)
            for axis in c.targets {
                if velocity == 0 {
                    let interrupted = axis.warnings.contains(.movementInterrupted)
                    axis.stop(at: c.now, immediately: false)
                    if !interrupted { axis.warnings.remove(.movementInterrupted) }
                } else {
                    let end = velocity > 0 ? axis.limitMax : axis.limitMin
                    axis.start(to: Double(end), speed: abs(velocity), acceleration: accel ?? axis.accel, at: c.now)
                }
            }
        default:
            throw .badCommand
        }
    }

    private func warnings(_ args: [String], _ c: Context) throws(ZaberRejection) -> String {
        guard args.isEmpty || args == ["clear"] else { throw (args.count == 1 ? ZaberRejection.badCommand : .badData) }
        var flags = Set<ZaberWarning>()
        for axis in c.targets { flags.formUnion(axis.warnings) }
        let listed = flags.sorted()
        if !args.isEmpty {
            for axis in c.targets { axis.warnings = axis.warnings.filter(\.isCondition) }
        }
        let count = listed.count < 10 ? "0\(listed.count)" : "\(listed.count)"
        return ([count] + listed.map(\.rawValue)).joined(separator: " ")
    }

    // MARK: Settings

    private enum Scope {
        case axis
        case device
    }

    private static let axisSettings: Set<String> = [
        "pos", "encoder.pos", "maxspeed", "accel", "limit.min", "limit.max", "limit.approach.maxspeed", "resolution",
        "peripheral.id", "peripheralid", "peripheral.serial", "peripheral.hw.modified", "motion.busy", "vel",
    ]
    private static let deviceSettings: Set<String> = [
        "device.id", "deviceid", "version", "version.build", "system.serial", "system.axiscount", "comm.alert", "comm.checksum",
        "comm.address", "comm.packet.size.max", "comm.command.packets.max", "comm.word.size.max", "device.hw.modified",
    ]

    private func scope(_ name: String, _ c: Context) throws(ZaberRejection) -> Scope {
        if Self.axisSettings.contains(name) { return .axis }
        guard Self.deviceSettings.contains(name) else { throw .badCommand }
        guard c.axis == 0 else { throw .deviceOnly }
        return .device
    }

    private func get(_ name: String, _ c: Context) throws(ZaberRejection) -> String {
        switch try scope(name, c) {
        case .device:
            let d = c.device
            switch name {
            case "device.id", "deviceid": return "\(d.spec.deviceID)"
            case "version": return d.spec.firmwareVersion
            case "version.build": return "\(d.spec.firmwareBuild)"
            case "system.serial": return "\(d.spec.serialNumber)"
            case "system.axiscount": return "\(d.axes.count)"
            case "comm.alert": return d.commAlert ? "1" : "0"
            case "comm.checksum": return d.commChecksum ? "1" : "0"
            case "comm.address": return "\(d.address)"
            case "comm.packet.size.max": return "\(d.spec.packetSizeMax)"
            case "comm.command.packets.max": return "\(d.spec.commandPacketsMax)"
            case "comm.word.size.max": return "\(d.spec.wordSizeMax)"
            default: return "0"  // device.hw.modified
            }
        case .axis:
            return try c.targets.map { (axis) throws(ZaberRejection) -> String in try axisValue(name, axis) }.joined(separator: " ")
        }
    }

    private func axisValue(_ name: String, _ axis: SimulatedAxis) throws(ZaberRejection) -> String {
        switch name {
        case "pos": return "\(axis.reportedPosition)"
        case "encoder.pos": return "\(axis.reportedPosition + Int64((noise.gaussian() * axis.spec.encoderNoiseCounts).rounded()))"
        case "maxspeed": return "\(axis.maxspeed)"
        case "accel": return "\(axis.accel)"
        case "limit.min": return "\(axis.limitMin)"
        case "limit.max": return "\(axis.limitMax)"
        case "limit.approach.maxspeed": return "\(axis.approachSpeed)"
        case "resolution": return "\(axis.spec.resolution)"
        case "motion.busy": return axis.isBusy ? "1" : "0"
        case "vel": return "\(ZaberUnits.speedData(microstepsPerSecond: axis.velocity))"
        default:  // peripheral.*: only a controller's axis has a peripheral
            guard let id = axis.spec.peripheralID else { throw .badCommand }
            switch name {
            case "peripheral.serial": return "\(axis.spec.peripheralSerial)"
            case "peripheral.hw.modified": return "0"
            default: return "\(id)"
            }
        }
    }

    private func set(_ name: String, to text: String, _ c: Context) throws(ZaberRejection) {
        let scope = try scope(name, c)
        guard let value = Int64(text) else { throw .badData }
        switch (scope, name) {
        case (.device, "comm.alert"), (.device, "comm.checksum"):
            guard value == 0 || value == 1 else { throw .badData }
            if name == "comm.alert" { c.device.commAlert = value == 1 } else { c.device.commChecksum = value == 1 }
        case (.device, "comm.address"):
            guard (1...99).contains(value) else { throw .badData }
            c.device.address = Int(value)
        case (.device, _):
            throw .badCommand
        case (.axis, "pos"), (.axis, "limit.min"), (.axis, "limit.max"):
            guard value >= Int64(Int32.min) && value <= Int64(Int32.max) else { throw .badData }
            for axis in c.targets {
                if name == "pos" && axis.isBusy { throw .statusBusy }
                if name == "limit.min" && value > axis.limitMax { throw .badData }
                if name == "limit.max" && value < axis.limitMin { throw .badData }
            }
            for axis in c.targets {
                switch name {
                case "pos": axis.position = Double(value)
                case "limit.min": axis.limitMin = value
                default: axis.limitMax = value
                }
            }
        case (.axis, "maxspeed"), (.axis, "accel"), (.axis, "limit.approach.maxspeed"):
            guard value >= 1 && value <= Int64(Int32.max) else { throw .badData }
            for axis in c.targets {
                switch name {
                case "maxspeed": axis.maxspeed = value
                case "accel": axis.accel = value
                default: axis.approachSpeed = value
                }
            }
        case (.axis, _):
            throw .badCommand
        }
    }

    // MARK: Storage

    private func storage(_ args: [String], _ c: Context) throws(ZaberRejection) -> [DeviceMessage] {
        var args = args[...]
        let perAxis = args.first == "axis"
        if perAxis {
            guard c.axis != 0 else { throw .badAxis }
            args = args.dropFirst()
        } else if c.axis != 0 {
            throw .deviceOnly
        }
        var store = perAxis ? c.device.axes[c.axis - 1].storage : c.device.storage
        defer {
            if perAxis { c.device.axes[c.axis - 1].storage = store } else { c.device.storage = store }
        }
        guard let verb = args.first else { throw .badData }
        let key = args.dropFirst().first
        let value = args.dropFirst(2).joined(separator: " ")
        func stored(after change: [String: String]) throws(ZaberRejection) -> [String: String] {
            guard change.reduce(0, { $0 + $1.key.count + $1.value.count }) <= Self.storageCapacity else { throw .full }
            return change
        }
        switch verb {
        case "set", "append":
            guard let key, args.count >= 3 else { throw .badData }  // values are never empty
            var next = store
            next[key] = verb == "set" ? value : (store[key] ?? "") + value
            store = try stored(after: next)
            return [ok(c)]
        case "get":
            guard let key, args.count == 2 else { throw .badData }
            guard let text = store[key] else { throw .badData }
            return [ok(c, data: text)]
        case "erase":
            guard let key, args.count == 2 else { throw .badData }
            guard store.removeValue(forKey: key) != nil else { throw .badData }
            return [ok(c)]
        case "exists":
            guard let key, args.count == 2 else { throw .badData }
            return [ok(c, data: store[key] == nil ? "0" : "1")]
        case "clear":
            guard args.count == 1 else { throw .badData }
            store.removeAll()
            return [ok(c)]
        case "print":
            // storage print [keys] [prefix P]: one info message per key, `set KEY [VALUE]`
            // (the form zaber-motion's key listing accepts).
            var options = args.dropFirst()
            let keysOnly = options.first == "keys"
            if keysOnly { options = options.dropFirst() }
            var prefix = ""
            if options.first == "prefix" {
                guard options.count == 2 else { throw .badData }
                prefix = options.last!
                options = []
            }
            guard options.isEmpty else { throw .badData }
            let infos = store.keys.filter { $0.hasPrefix(prefix) }.sorted().map { name in
                DeviceMessage(
                    kind: .info, device: c.device.address, axis: c.axis, messageID: c.id,
                    data: keysOnly ? "set \(name)" : "set \(name) \(store[name]!)")
            }
            return [ok(c)] + infos
        default:
            throw .badCommand
        }
    }
}
