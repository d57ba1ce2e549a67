#if canImport(Glibc)
import Glibc
#endif
import CSerialPort
import OperandoCore

/// A libserialport failure: which call, which port, and libserialport's own message.
public struct SerialPortError: Error, CustomStringConvertible, Sendable {
    public var port: String
    public var operation: String
    public var message: String

    public var description: String { "\(operation) on \(port) failed: \(message)" }

    /// Builds the error from libserialport's last error (call right after the failing call).
    static func last(_ port: String, _ operation: String, _ code: sp_return) -> SerialPortError {
        var message: String
        switch code {
        case SP_ERR_ARG: message = "invalid argument"
        case SP_ERR_MEM: message = "out of memory"
        case SP_ERR_SUPP: message = "not supported by this port or platform"
        default:
            if let m = sp_last_error_message() {
                message = String(cString: m)
                sp_free_error_message(m)
            } else {
                message = "error \(code.rawValue)"
            }
        }
        return SerialPortError(port: port, operation: operation, message: message)
    }
}

/// The serial ports on this machine, as libserialport sees them, and matching by identity.
public enum SerialPorts {
    /// Every port sp_list_ports reports, with USB identity where there is one.
    public static func list() throws -> [SerialPortInfo] {
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let rc = sp_list_ports(&list)
        guard rc == SP_OK, let list else { throw SerialPortError.last("(all ports)", "sp_list_ports", rc) }
        defer { sp_free_port_list(list) }
        var out: [SerialPortInfo] = []
        var i = 0
        while let port = list[i] {
            out.append(info(port))
            i += 1
        }
        return out.sorted { $0.name < $1.name }
    }

    static func info(_ port: OpaquePointer) -> SerialPortInfo {
        func string(_ p: UnsafeMutablePointer<CChar>?) -> String? { p.map { String(cString: $0) } }
        let name = string(sp_get_port_name(port)) ?? "?"
        var info = SerialPortInfo(name: name, description: string(sp_get_port_description(port)) ?? "", transport: "native")
        switch sp_get_port_transport(port) {
        case SP_TRANSPORT_USB:
            info.transport = "usb"
            var vid: Int32 = 0, pid: Int32 = 0
            if sp_get_port_usb_vid_pid(port, &vid, &pid) == SP_OK {
                info.vendorID = UInt16(truncatingIfNeeded: vid)
                info.productID = UInt16(truncatingIfNeeded: pid)
            }
            var bus: Int32 = 0, address: Int32 = 0
            if sp_get_port_usb_bus_address(port, &bus, &address) == SP_OK {
                info.usbBus = Int(bus)
                info.usbAddress = Int(address)
            }
            info.manufacturer = string(sp_get_port_usb_manufacturer(port))
            info.product = string(sp_get_port_usb_product(port))
            info.serialNumber = string(sp_get_port_usb_serial(port))
            info.usbPortPath = usbPortPath(ttyName: String(name.split(separator: "/").last ?? ""))
        case SP_TRANSPORT_BLUETOOTH:
            info.transport = "bluetooth"
        default:
            break
        }
        return info
    }

    /// The sysfs port path (`1-1.2`) of the USB device a tty belongs to: the name of the path
    /// component just above the interface (`1-1.2:1.0`) in /sys/class/tty/NAME/device.
    static func usbPortPath(ttyName: String) -> String? {
        guard let resolved = realpath("/sys/class/tty/\(ttyName)/device", nil) else { return nil }
        defer { free(resolved) }
        for component in String(cString: resolved).split(separator: "/").reversed() {
            if let colon = component.firstIndex(of: ":"), component.first?.isNumber == true, component.contains("-") {
                return String(component[..<colon])
            }
        }
        return nil
    }

    /// The device path for `match`: the path itself, or the one port whose identity matches.
    public static func resolve(_ match: SerialPortMatch) throws -> String {
        if case .path(let p) = match { return p }
        let candidates = try list().filter { match.matches($0) }
        guard let first = candidates.first else {
            throw InstrumentError(.notFound, device: "\(match)", "no serial port matches \(match); `operandoctl ports` lists what is connected")
        }
        guard candidates.count == 1 else {
            throw InstrumentError(.unsupported, device: "\(match)", "\(candidates.count) ports match \(match) (\(candidates.map(\.name).joined(separator: ", "))); add the serial number to the match")
        }
        return first.name
    }
}

/// A serial port as a byte stream. Real ports (USB bridges, on-board UARTs) go through
/// libserialport, found by path or by USB identity each time they are opened, so a device that
/// comes back under another name after a replug is found again. Pseudo-terminals (simulators,
/// socat links), which libserialport refuses, are opened with termios directly.
///
/// Reads return as soon as any byte arrives, stamped with the host time at that moment. A port
/// whose device node disappears, or whose read fails, reports `.disconnected`.
public final class SerialPortTransport: ByteStreamTransport, ModemLineControl, @unchecked Sendable {
    public let match: SerialPortMatch
    public let settings: SerialSettings
    private let clock: any HostClock
    private var mode: Mode = .closed
    private var path: String = ""
    /// What `open()` did that belongs in the record (latency timer, how the port was opened).
    public private(set) var openNotes: [String] = []

    private enum Mode {
        case closed
        case libserialport(OpaquePointer)
        case termios(FileDescriptor)
    }

    public init(match: SerialPortMatch, settings: SerialSettings, clock: any HostClock) {
        self.match = match
        self.settings = settings
        self.clock = clock
    }

    deinit { close() }

    public var endpoint: String { path.isEmpty || path == "\(match)" ? "serial:\(match)" : "serial:\(path) (\(match))" }

    public func open() throws {
        close()
        openNotes = []
        path = try SerialPorts.resolve(match)
        var port: OpaquePointer?
        let rc = sp_get_port_by_name(path, &port)
        if rc == SP_OK, let port {
            do {
                try openWithLibserialport(port)
                mode = .libserialport(port)
            } catch {
                sp_free_port(port)
                throw error
            }
        } else if isTerminal(path) {
            mode = .termios(try openWithTermios())
            openNotes.append("opened \(path) with termios (a pseudo-terminal; libserialport does not take these)")
        } else if !FileSystem.exists(path) {
            throw InstrumentError(.notFound, device: endpoint, "\(path) does not exist; is the device plugged in? `operandoctl ports` lists serial ports")
        } else {
            throw InstrumentError(.transportFailed, device: endpoint, "not a serial port", underlying: SerialPortError.last(path, "sp_get_port_by_name", rc))
        }
    }

    private func openWithLibserialport(_ port: OpaquePointer) throws {
        func check(_ rc: sp_return, _ what: String) throws {
            guard rc == SP_OK else {
                throw InstrumentError(.transportFailed, device: endpoint, "cannot configure the port (\(what))", underlying: SerialPortError.last(path, what, rc))
            }
        }
        let rc = sp_open(port, SP_MODE_READ_WRITE)
        guard rc == SP_OK else {
            let error = SerialPortError.last(path, "sp_open", rc)
            let hint = error.message.contains("ermission") ? "; add the user to the dialout group (the systemd unit does)" : ""
            throw InstrumentError(.notFound, device: endpoint, "cannot open\(hint)", underlying: error)
        }
        do {
            try check(sp_set_baudrate(port, Int32(settings.baudRate)), "sp_set_baudrate \(settings.baudRate)")
            try check(sp_set_bits(port, Int32(settings.dataBits)), "sp_set_bits \(settings.dataBits)")
            let parity: sp_parity = switch settings.parity {
            case .none: SP_PARITY_NONE
            case .odd: SP_PARITY_ODD
            case .even: SP_PARITY_EVEN
            case .mark: SP_PARITY_MARK
            case .space: SP_PARITY_SPACE
            }
            try check(sp_set_parity(port, parity), "sp_set_parity \(settings.parity)")
            try check(sp_set_stopbits(port, Int32(settings.stopBits)), "sp_set_stopbits \(settings.stopBits)")
            let flow: sp_flowcontrol = switch settings.flowControl {
            case .none: SP_FLOWCONTROL_NONE
            case .xonxoff: SP_FLOWCONTROL_XONXOFF
            case .rtscts: SP_FLOWCONTROL_RTSCTS
            }
            try check(sp_set_flowcontrol(port, flow), "sp_set_flowcontrol \(settings.flowControl)")
            if let dtr = settings.dtr { try check(sp_set_dtr(port, dtr ? SP_DTR_ON : SP_DTR_OFF), "sp_set_dtr") }
            if let rts = settings.rts, settings.flowControl != .rtscts { try check(sp_set_rts(port, rts ? SP_RTS_ON : SP_RTS_OFF), "sp_set_rts") }
            _ = sp_flush(port, SP_BUF_BOTH)
        } catch {
            sp_close(port)
            throw error
        }
        openNotes.append("opened \(path) with libserialport at \(settings)")
        if let note = setLatencyTimer() { openNotes.append(note) }
    }

    /// FTDI bridges buffer received bytes for up to `latency_timer` ms (16 by default) before
    /// sending them to the host, which blurs host timestamps. Set it to 1 ms where the kernel
    /// exposes it and say what happened.
    private func setLatencyTimer() -> String? {
        let name = String(path.split(separator: "/").last ?? "")
        let attribute = "/sys/class/tty/\(name)/device/latency_timer"
        guard let before = try? FileSystem.readAll(attribute) else { return nil }
        let old = String(decoding: before.filter { $0 > 0x20 }, as: UTF8.self)
        if old == "1" { return "FTDI latency timer already 1 ms" }
        do {
            let fd = try FileDescriptor.open(attribute, flags: O_WRONLY)
            defer { fd.close() }
            try fd.writeAll(Array("1".utf8))
            return "FTDI latency timer set to 1 ms (was \(old) ms)"
        } catch {
            return "FTDI latency timer left at \(old) ms: cannot write \(attribute) (\(error)); the udev rules in Config/ set it"
        }
    }

    private func isTerminal(_ path: String) -> Bool {
        let fd = Glibc.open(path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        return isatty(fd) == 1
    }

    private func openWithTermios() throws -> FileDescriptor {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, flags: O_RDWR | O_NOCTTY | O_NONBLOCK)
        } catch {
            throw InstrumentError(.notFound, device: endpoint, "cannot open", underlying: error)
        }
        var t = termios()
        guard tcgetattr(fd.rawValue, &t) == 0 else {
            let e = Errno.current
            fd.close()
            throw InstrumentError(.transportFailed, device: endpoint, "tcgetattr failed", underlying: e)
        }
        cfmakeraw(&t)
        t.c_cflag |= tcflag_t(CLOCAL | CREAD)
        if let speed = Self.speed(settings.baudRate) { cfsetspeed(&t, speed) }
        guard tcsetattr(fd.rawValue, TCSANOW, &t) == 0 else {
            let e = Errno.current
            fd.close()
            throw InstrumentError(.transportFailed, device: endpoint, "tcsetattr failed", underlying: e)
        }
        tcflush(fd.rawValue, TCIOFLUSH)
        return fd
    }

    private static func speed(_ baud: Int) -> speed_t? {
        switch baud {
        case 9600: speed_t(B9600)
        case 19200: speed_t(B19200)
        case 38400: speed_t(B38400)
        case 57600: speed_t(B57600)
        case 115_200: speed_t(B115200)
        case 230_400: speed_t(B230400)
        case 460_800: speed_t(B460800)
        case 921_600: speed_t(B921600)
        default: nil
        }
    }

    public func close() {
        switch mode {
        case .closed: break
        case .libserialport(let port):
            sp_close(port)
            sp_free_port(port)
        case .termios(let fd): fd.close()
        }
        mode = .closed
    }

    public func setModemLine(_ line: ModemLine, asserted: Bool) throws {
        switch mode {
        case .closed:
            throw InstrumentError(.disconnected, device: endpoint, "the port is closed; \(line) cannot be driven")
        case .termios:
            throw InstrumentError(.unsupported, device: endpoint, "\(path) is a pseudo-terminal, which has no modem lines; \(line) triggers need a real serial port")
        case .libserialport(let port):
            if line == .rts && settings.flowControl == .rtscts {
                throw InstrumentError(.unsupported, device: endpoint, "RTS is driven by RTS/CTS flow control on this port; use DTR, or set flow_control = \"none\"")
            }
            let rc = line == .dtr ? sp_set_dtr(port, asserted ? SP_DTR_ON : SP_DTR_OFF) : sp_set_rts(port, asserted ? SP_RTS_ON : SP_RTS_OFF)
            guard rc == SP_OK else {
                throw lost("cannot set \(line): the port went away", SerialPortError.last(path, line == .dtr ? "sp_set_dtr" : "sp_set_rts", rc))
            }
        }
    }

    private func lost(_ detail: String, _ underlying: (any Error & Sendable)? = nil) -> InstrumentError {
        InstrumentError(.disconnected, device: endpoint, detail, underlying: underlying)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        switch mode {
        case .closed:
            throw lost("the port is not open")
        case .libserialport(let port):
            let n = sp_blocking_read_next(port, buffer.baseAddress, buffer.count, UInt32(timeout.pollMilliseconds))
            let now = clock.now()
            if n.rawValue > 0 { return TransportRead(count: Int(n.rawValue), hostTime: now) }
            if n.rawValue < 0 { throw lost("read failed; the device was unplugged or reset", SerialPortError.last(path, "sp_blocking_read_next", n)) }
            // A timeout: a vanished device node means the cable was pulled.
            if !FileSystem.exists(path) { throw lost("\(path) disappeared; the device was unplugged") }
            return TransportRead(count: 0, hostTime: now)
        case .termios(let fd):
            var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, timeout.pollMilliseconds)
            guard r > 0 else {
                if !FileSystem.exists(path) { throw lost("\(path) disappeared") }
                return TransportRead(count: 0, hostTime: clock.now())
            }
            let n = Glibc.read(fd.rawValue, buffer.baseAddress, buffer.count)
            let now = clock.now()
            if n > 0 { return TransportRead(count: n, hostTime: now) }
            let e = Errno.current
            if n < 0 && (e == .wouldBlock || e == .interrupted) { return TransportRead(count: 0, hostTime: now) }
            throw lost("the other end of the terminal closed", n < 0 ? e : nil)
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws {
        switch mode {
        case .closed:
            throw lost("the port is not open")
        case .libserialport(let port):
            let n = sp_blocking_write(port, bytes.baseAddress, bytes.count, UInt32(timeout.pollMilliseconds))
            if n.rawValue < 0 { throw lost("write failed", SerialPortError.last(path, "sp_blocking_write", n)) }
            if Int(n.rawValue) < bytes.count {
                throw InstrumentError(.replyTimedOut, device: endpoint, "only \(n.rawValue) of \(bytes.count) bytes went out in \(timeout); is hardware flow control holding the line?")
            }
        case .termios(let fd):
            var offset = 0
            while offset < bytes.count {
                let n = Glibc.write(fd.rawValue, bytes.baseAddress! + offset, bytes.count - offset)
                if n > 0 {
                    offset += n
                    continue
                }
                let e = Errno.current
                guard n < 0 && (e == .wouldBlock || e == .interrupted) else { throw lost("write failed", e) }
                var p = pollfd(fd: fd.rawValue, events: Int16(POLLOUT), revents: 0)
                if poll(&p, 1, timeout.pollMilliseconds) == 0 {
                    throw InstrumentError(.replyTimedOut, device: endpoint, "the terminal has not taken \(bytes.count - offset) bytes in \(timeout)")
                }
            }
        }
    }
}
