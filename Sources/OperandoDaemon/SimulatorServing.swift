import NanonisDriver
import NanonisSimulator
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import ZaberSimulator

/// The simulators `operando-sim` can serve over a real byte stream (a TCP connection or a
/// pseudo-terminal), so operandod or a vendor's own client library can talk to them.
public enum SimulatorServing {
    /// The Zaber ASCII daisy chain (`ZaberSimulator`). Zaber driver names in `DriverRegistry`
    /// (e.g. "zaber-ascii") are accepted for it too.
    public static let zaber = "zaber"
    /// The Nanonis SPM controller (`NanonisSimulator`); "nanonis-spm" is accepted too.
    public static let nanonis = "nanonis"

    private static func isZaber(_ name: String) -> Bool { name == zaber || name.hasPrefix("zaber") && DriverRegistry.names.contains(name) }

    /// Every simulator name `makeServer` accepts.
    public static var names: [String] {
        var names = DriverRegistry.names.filter { DriverRegistry.linkKind($0) == .byteStream && !isZaber($0) && $0 != NanonisDriver.driverName }
        names.append(zaber)
        names += [nanonis, NanonisDriver.driverName]
        names += DriverRegistry.names.filter { isZaber($0) && $0 != zaber }
        return names
    }

    /// What a served simulator is made of.
    public struct Options: Sendable {
        /// Device name (used in serial numbers).
        public var name: String
        /// Cell seconds per host second, for simulators on the virtual cell.
        public var timeScale: Double
        /// Devices on a Zaber chain.
        public var zaberDevices: Int
        /// The simulated instrument's own clock (simulators with a device clock).
        public var deviceClock: SimulatedDeviceClock

        public init(
            name: String = "sim", timeScale: Double = 600, zaberDevices: Int = 1,
            deviceClock: SimulatedDeviceClock = SimulatedDeviceClock(driftPPM: 25, offsetNs: 1_000_000_000_000)
        ) {
            self.name = name
            self.timeScale = timeScale
            self.zaberDevices = zaberDevices
            self.deviceClock = deviceClock
        }
    }

    /// Serves one client at a time. A Zaber chain keeps its state from one client to the next
    /// (devices stay powered while the host reconnects); the demo simulators start afresh.
    public final class Server: Sendable {
        private let body: @Sendable (any ByteStreamTransport, () -> Bool) throws -> Void

        init(_ body: @escaping @Sendable (any ByteStreamTransport, () -> Bool) throws -> Void) { self.body = body }

        /// Serves `client` until `shouldStop` returns true or the client goes away.
        public func serve(_ client: any ByteStreamTransport, shouldStop: () -> Bool) throws {
            try body(client, shouldStop)
        }
    }

    /// Makes the server for `simulator`, or throws `InstrumentError(.unsupported)` naming the
    /// simulators there are.
    public static func makeServer(_ simulator: String, options: Options, clock: any HostClock) throws -> Server {
        if isZaber(simulator) {
            guard (1...99).contains(options.zaberDevices) else {
                throw InstrumentError(.unsupported, device: simulator, "a Zaber chain has 1 to 99 devices, not \(options.zaberDevices)")
            }
            let chain = ZaberSimulator(devices: ZaberSimulator.standard(count: options.zaberDevices), clock: clock, seed: DriverRegistry.seed(for: options.name))
            return Server { client, shouldStop in chain.serve(client, shouldStop: shouldStop) }
        }
        if simulator == NanonisDriver.driverName || simulator == nanonis {
            // One controller for all clients: its scan goes on while the host reconnects.
            var params = VirtualCell.Parameters()
            params.timeScale = options.timeScale
            let controller = NanonisSimulator(cell: VirtualCell(params), clock: clock, seed: DriverRegistry.seed(for: options.name))
            return Server { client, shouldStop in controller.serve(client, shouldStop: shouldStop) }
        }
        guard DriverRegistry.linkKind(simulator) == .byteStream else {
            throw InstrumentError(
                .unsupported, device: simulator,
                "no byte-stream simulator by that name; available: \(names.joined(separator: ", "))")
        }
        var params = VirtualCell.Parameters()
        params.timeScale = options.timeScale
        let cell = VirtualCell(params)
        return Server { client, shouldStop in
            try DriverRegistry.serveSimulator(simulator, name: options.name, byteStream: client, cell: cell, clock: clock, deviceClock: options.deviceClock, shouldStop: shouldStop)
        }
    }
}
