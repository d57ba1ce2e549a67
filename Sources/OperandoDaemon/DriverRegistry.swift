import DemoDriver
import DemoSimulator
import OperandoCore
import OperandoIO
import OperandoVirtualCell

/// The drivers this build knows, and their simulators for `transport = "simulated"`.
public enum DriverRegistry {
    public static let names = [DemoPotentiostatDriver.driverName, DemoXRFDriver.driverName]

    public static func linkKind(_ driver: String) -> LinkKind? {
        switch driver {
        case DemoPotentiostatDriver.driverName: DemoPotentiostatDriver.linkKind
        case DemoXRFDriver.driverName: DemoXRFDriver.linkKind
        default: nil
        }
    }

    public static func makeDriver(_ driver: String, name: String, settings: DeviceSettings) throws -> any Instrument {
        switch driver {
        case DemoPotentiostatDriver.driverName: try DemoPotentiostatDriver(name: name, settings: settings)
        case DemoXRFDriver.driverName: try DemoXRFDriver(name: name, settings: settings)
        default: throw InstrumentError(.unsupported, device: name, "unknown driver \"\(driver)\"; known: \(names.joined(separator: ", "))")
        }
    }

    /// Runs the simulator for `driver` on the device end of `link` until `shouldStop`.
    public static func serveSimulator(
        _ driver: String, name: String, link: InMemoryLink, cell: VirtualCell, clock: any HostClock, shouldStop: () -> Bool
    ) {
        let seed = UInt64(truncatingIfNeeded: name.utf8.reduce(5381) { ($0 << 5) &+ $0 &+ Int($1) })
        switch driver {
        case DemoPotentiostatDriver.driverName:
            DemoPotentiostatSimulator(cell: cell, clock: clock, serialNumber: "PS-\(name)", seed: seed).serve(link.deviceByteStream, shouldStop: shouldStop)
        case DemoXRFDriver.driverName:
            DemoXRFSimulator(cell: cell, clock: clock, serialNumber: "XRF-\(name)", seed: seed).serve(link.devicePackets, shouldStop: shouldStop)
        default:
            break
        }
    }

    /// Serves a simulator on a byte-stream transport (for `operando-sim --listen`).
    public static func serveSimulator(
        _ driver: String, name: String, byteStream: any ByteStreamTransport, cell: VirtualCell, clock: any HostClock, shouldStop: () -> Bool
    ) throws {
        switch driver {
        case DemoPotentiostatDriver.driverName:
            DemoPotentiostatSimulator(cell: cell, clock: clock, serialNumber: "PS-\(name)").serve(byteStream, shouldStop: shouldStop)
        default:
            throw InstrumentError(.unsupported, device: name, "the \(driver) simulator does not speak over a byte stream")
        }
    }
}
