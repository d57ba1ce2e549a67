#if canImport(Glibc)
import Glibc
#endif
import CLibUSB
import OperandoCore
import Synchronization

/// A libusb failure: which call, on which device, and what it means.
public struct USBError: Error, CustomStringConvertible, Sendable {
    /// The `LIBUSB_ERROR_*` (or, for transfers, `-(100 + LIBUSB_TRANSFER_*)`) value.
    public var code: Int32
    public var operation: String
    public var device: String

    public init(_ code: Int32, _ operation: String, device: String) {
        self.code = code
        self.operation = operation
        self.device = device
    }

    public var description: String { "\(operation) on \(device) failed: \(Self.explain(code))" }

    /// libusb's name for `code` with what it means here and what to do.
    static func explain(_ code: Int32) -> String {
        let name = String(cString: libusb_error_name(code))
        switch code {
        case LIBUSB_ERROR_ACCESS.rawValue:
            return "permission denied (\(name)); give the daemon's user access to the device with a udev rule (e.g. SUBSYSTEM==\"usb\", ATTR{idVendor}==\"10c4\", MODE=\"0660\", GROUP=\"plugdev\")"
        case LIBUSB_ERROR_NO_DEVICE.rawValue: return "the device is gone (\(name)): unplugged or reset"
        case LIBUSB_ERROR_BUSY.rawValue: return "the interface is in use by another program or a kernel driver (\(name)); stop the other program"
        case LIBUSB_ERROR_TIMEOUT.rawValue: return "the device did not complete the transfer in time (\(name))"
        case LIBUSB_ERROR_PIPE.rawValue: return "the endpoint stalled (\(name)): the device refused the request"
        case LIBUSB_ERROR_OVERFLOW.rawValue: return "the device sent more data than was asked for (\(name))"
        case LIBUSB_ERROR_NOT_FOUND.rawValue: return "not found (\(name)): no such interface or endpoint on this device"
        case LIBUSB_ERROR_IO.rawValue: return "input/output error (\(name)); check the cable and hub"
        default: return String(cString: libusb_strerror(code)) + " (\(name))"
        }
    }
}

/// The process's libusb context with its own event thread, which completes every asynchronous
/// transfer (and so stamps arrivals) and delivers hotplug events where libusb has them.
public final class USBContext: @unchecked Sendable {
    let raw: OpaquePointer
    /// Whether libusb reports device arrival and departure here; otherwise transports poll.
    public let hasHotplug: Bool
    private var eventThread: IOThread?
    /// Hotplug departures: listeners keyed by a token, called on the event thread with (bus, address).
    private let departureListeners = Mutex<[Int: @Sendable (Int, Int) -> Void]>([:])
    private let nextToken = Atomic<Int>(1)
    private var hotplugHandle: libusb_hotplug_callback_handle = 0

    private static let sharedContext = Mutex<USBContext?>(nil)

    /// The process-wide context, created on first use.
    public static func shared() throws -> USBContext {
        try sharedContext.withLock { current in
            if let current { return current }
            let made = try USBContext()
            current = made
            return made
        }
    }

    /// A context lives as long as the process: transports come and go, the event thread stays.
    private init() throws {
        var ctx: OpaquePointer?
        let rc = libusb_init(&ctx)
        guard rc == 0, let ctx else { throw USBError(rc, "libusb_init", device: "(libusb)") }
        raw = ctx
        hasHotplug = libusb_has_capability(UInt32(LIBUSB_CAP_HAS_HOTPLUG.rawValue)) != 0
        if hasHotplug {
            var handle: libusb_hotplug_callback_handle = 0
            let events = Int32(LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT.rawValue)
            let registered = libusb_hotplug_register_callback(
                ctx, events, 0, LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY,
                usbHotplugCallback, Unmanaged.passUnretained(self).toOpaque(), &handle)
            if registered == 0 { hotplugHandle = handle }
        }
        eventThread = IOThread(name: "usb-events") { [self] in
            while true {
                var tv = timeval(tv_sec: 0, tv_usec: 200_000)
                _ = libusb_handle_events_timeout_completed(raw, &tv, nil)
            }
        }
    }

    fileprivate func deviceLeft(bus: Int, address: Int) {
        for listener in departureListeners.withLock({ Array($0.values) }) { listener(bus, address) }
    }

    func onDeparture(_ listener: @escaping @Sendable (Int, Int) -> Void) -> Int {
        let token = nextToken.add(1, ordering: .relaxed).oldValue
        departureListeners.withLock { $0[token] = listener }
        return token
    }

    func removeDepartureListener(_ token: Int) { _ = departureListeners.withLock { $0.removeValue(forKey: token) } }

    /// Every device libusb sees (root hubs included), with strings from sysfs where readable.
    public func devices() throws -> [USBDeviceInfo] {
        try withDeviceList { list in list.map { Self.info($0) } }
    }

    /// Calls `body` with libusb's current device list (valid only inside `body`).
    func withDeviceList<T>(_ body: ([OpaquePointer]) throws -> T) throws -> T {
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let count = libusb_get_device_list(raw, &list)
        guard count >= 0, let list else { throw USBError(Int32(truncatingIfNeeded: count), "libusb_get_device_list", device: "(all devices)") }
        defer { libusb_free_device_list(list, 1) }
        return try body((0..<count).compactMap { list[$0] })
    }

    static func info(_ device: OpaquePointer) -> USBDeviceInfo {
        var descriptor = libusb_device_descriptor()
        _ = libusb_get_device_descriptor(device, &descriptor)
        let bus = Int(libusb_get_bus_number(device))
        var ports = [UInt8](repeating: 0, count: 8)
        let depth = Int(libusb_get_port_numbers(device, &ports, Int32(ports.count)))
        let portPath = depth > 0 ? "\(bus)-" + ports[0..<depth].map(String.init).joined(separator: ".") : "usb\(bus)"
        var info = USBDeviceInfo(
            bus: bus, address: Int(libusb_get_device_address(device)), portPath: portPath,
            vendorID: descriptor.idVendor, productID: descriptor.idProduct, deviceClass: descriptor.bDeviceClass)
        // The kernel's copies of the string descriptors: readable without opening the device.
        let sysfs = "/sys/bus/usb/devices/\(portPath)/"
        info.manufacturer = readAttribute(sysfs + "manufacturer")
        info.product = readAttribute(sysfs + "product")
        info.serialNumber = readAttribute(sysfs + "serial")
        return info
    }

    static func readAttribute(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 256)
        guard fgets(&buffer, Int32(buffer.count), file) != nil else { return nil }
        var bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        while let last = bytes.last, last == 0x0A || last == 0x0D || last == 0x20 { bytes.removeLast() }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }
}

private func usbHotplugCallback(
    _ ctx: OpaquePointer?, _ device: OpaquePointer?, _ event: libusb_hotplug_event, _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    guard let device, let userData else { return 0 }
    let context = Unmanaged<USBContext>.fromOpaque(userData).takeUnretainedValue()
    if event == LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT {
        context.deviceLeft(bus: Int(libusb_get_bus_number(device)), address: Int(libusb_get_device_address(device)))
    }
    return 0  // stay registered
}

/// An open USB device: its interface claimed (a kernel driver detached when needed), its
/// endpoints found, control transfers, and its strings read through the device itself.
public final class USBDeviceHandle: @unchecked Sendable {
    public let info: USBDeviceInfo
    public let interface: Int
    let raw: OpaquePointer
    /// The interface's first bulk OUT and IN endpoints and their packet sizes.
    public let bulkOut: UInt8?
    public let bulkIn: UInt8?
    public let maxPacketSize: Int
    /// Manufacturer, product and serial number as the device reports them (GET_DESCRIPTOR).
    public private(set) var strings: (manufacturer: String?, product: String?, serialNumber: String?) = (nil, nil, nil)
    private var claimed = false

    /// Opens the one device `match` names (re-enumerated now), selects configuration
    /// `configuration` if another one is active, and claims `interface`.
    public init(context: USBContext, match: USBDeviceMatch, interface: Int = 0, configuration: Int = 1) throws {
        let label = "\(match)"
        var opened: OpaquePointer?
        var found: USBDeviceInfo?
        try context.withDeviceList { list in
            var candidates: [(OpaquePointer, USBDeviceInfo)] = []
            for device in list {
                let info = USBContext.info(device)
                guard info.vendorID == match.vendor, info.productID == match.product else { continue }
                candidates.append((device, info))
            }
            // A serial number sysfs does not show is read from the device itself.
            if let wanted = match.serialNumber {
                candidates = candidates.filter { device, info in
                    if let serial = info.serialNumber { return serial == wanted }
                    return Self.readSerial(device) == wanted
                }
            }
            if let port = match.portPath { candidates = candidates.filter { $0.1.portPath == port } }
            guard let only = candidates.first else {
                throw InstrumentError(.notFound, device: label, "no USB device matches \(match); `operandoctl ports` lists what is connected")
            }
            guard candidates.count == 1 else {
                throw InstrumentError(
                    .unsupported, device: label,
                    "\(candidates.count) USB devices match \(match) (at \(candidates.map(\.1.portPath).joined(separator: ", "))); add the serial number or the port to the match")
            }
            let rc = libusb_open(only.0, &opened)
            guard rc == 0, opened != nil else {
                throw InstrumentError(rc == LIBUSB_ERROR_NO_DEVICE.rawValue ? .notFound : .transportFailed, device: label, "cannot open \(only.1.node)", underlying: USBError(rc, "libusb_open", device: only.1.node))
            }
            found = only.1
        }
        guard let handle = opened, let info = found else { throw InstrumentError(.notFound, device: label, "no USB device matches \(match)") }
        raw = handle
        self.info = info
        self.interface = interface
        var endpoints: (out: UInt8?, in: UInt8?, size: Int) = (nil, nil, 64)
        do {
            _ = libusb_set_auto_detach_kernel_driver(handle, 1)  // NOT_SUPPORTED where there are no kernel drivers: fine
            var active: Int32 = 0
            let got = libusb_get_configuration(handle, &active)
            if got == 0 && Int(active) != configuration {
                try Self.check(libusb_set_configuration(handle, Int32(configuration)), "libusb_set_configuration(\(configuration))", info)
            }
            try Self.check(libusb_claim_interface(handle, Int32(interface)), "libusb_claim_interface(\(interface))", info)
            endpoints = try Self.bulkEndpoints(handle, interface: interface, info: info)
        } catch {
            libusb_close(handle)
            throw error
        }
        claimed = true
        bulkOut = endpoints.out
        bulkIn = endpoints.in
        maxPacketSize = endpoints.size
        strings = (readString(index: .manufacturer), readString(index: .product), readString(index: .serialNumber))
    }

    deinit { close() }

    /// Releases the interface and closes the device (idempotent).
    public func close() {
        guard claimed else { return }
        claimed = false
        _ = libusb_release_interface(raw, Int32(interface))
        libusb_close(raw)
    }

    static func check(_ rc: Int32, _ operation: String, _ info: USBDeviceInfo) throws {
        guard rc != 0 else { return }
        let code: InstrumentError.Code = rc == LIBUSB_ERROR_NO_DEVICE.rawValue ? .disconnected : .transportFailed
        throw InstrumentError(code, device: info.node, "\(operation) failed", underlying: USBError(rc, operation, device: info.node))
    }

    private static func bulkEndpoints(_ handle: OpaquePointer, interface: Int, info: USBDeviceInfo) throws -> (out: UInt8?, in: UInt8?, size: Int) {
        var config: UnsafeMutablePointer<libusb_config_descriptor>?
        try check(libusb_get_active_config_descriptor(libusb_get_device(handle), &config), "libusb_get_active_config_descriptor", info)
        guard let config else { throw InstrumentError(.protocolViolation, device: info.node, "the device has no active configuration") }
        defer { libusb_free_config_descriptor(config) }
        guard interface < Int(config.pointee.bNumInterfaces), let altsettings = config.pointee.interface[interface].altsetting,
            config.pointee.interface[interface].num_altsetting > 0
        else {
            throw InstrumentError(.unsupported, device: info.node, "the device has no interface \(interface) (it has \(config.pointee.bNumInterfaces))")
        }
        let setting = altsettings[0]
        var result: (out: UInt8?, in: UInt8?, size: Int) = (nil, nil, 64)
        for i in 0..<Int(setting.bNumEndpoints) {
            let endpoint = setting.endpoint[i]
            guard Int32(endpoint.bmAttributes & 0x03) == Int32(LIBUSB_TRANSFER_TYPE_BULK.rawValue) else { continue }
            if endpoint.bEndpointAddress & 0x80 != 0 {
                if result.in == nil { result.in = endpoint.bEndpointAddress; result.size = Int(endpoint.wMaxPacketSize) }
            } else if result.out == nil {
                result.out = endpoint.bEndpointAddress
            }
        }
        return result
    }

    enum StringIndex { case manufacturer, product, serialNumber }

    private func readString(index: StringIndex) -> String? {
        var descriptor = libusb_device_descriptor()
        guard libusb_get_device_descriptor(libusb_get_device(raw), &descriptor) == 0 else { return nil }
        let i: UInt8 = switch index {
        case .manufacturer: descriptor.iManufacturer
        case .product: descriptor.iProduct
        case .serialNumber: descriptor.iSerialNumber
        }
        return try? Self.stringDescriptor(raw, node: info.node, i)
    }

    /// String descriptor `index` in the device's first language, read with GET_DESCRIPTOR
    /// control transfers (nil for index 0, "no string").
    static func stringDescriptor(_ raw: OpaquePointer, node: String, _ index: UInt8, timeout: Duration = .seconds(1)) throws -> String? {
        guard index != 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 255)
        func get(_ index: UInt8, language: UInt16) throws -> ArraySlice<UInt8> {
            // bmRequestType 0x80 (IN, standard, device), GET_DESCRIPTOR, wValue = (STRING << 8) | index.
            let n = try buffer.withUnsafeMutableBytes {
                try control(raw, node: node, requestType: 0x80, request: 0x06, value: UInt16(0x03) << 8 | UInt16(index), index: language, data: $0, timeout: timeout)
            }
            guard n >= 2, buffer[1] == 0x03, Int(buffer[0]) <= n else {
                throw InstrumentError(.protocolViolation, device: node, "string descriptor \(index) is malformed (\(n) bytes)")
            }
            return buffer[2..<Int(buffer[0])]
        }
        let languages = try get(0, language: 0)
        guard languages.count >= 2 else { return nil }
        let language = UInt16(languages[languages.startIndex]) | UInt16(languages[languages.startIndex + 1]) << 8
        let utf16 = try get(index, language: language)
        let units = stride(from: utf16.startIndex, to: utf16.endIndex - 1, by: 2).map { UInt16(utf16[$0]) | UInt16(utf16[$0 + 1]) << 8 }
        return String(decoding: units, as: UTF16.self)
    }

    /// The serial number of an unopened device, read by opening it briefly (nil if that fails).
    static func readSerial(_ device: OpaquePointer) -> String? {
        var descriptor = libusb_device_descriptor()
        guard libusb_get_device_descriptor(device, &descriptor) == 0, descriptor.iSerialNumber != 0 else { return nil }
        var handle: OpaquePointer?
        guard libusb_open(device, &handle) == 0, let handle else { return nil }
        defer { libusb_close(handle) }
        return try? stringDescriptor(handle, node: "(unopened device)", descriptor.iSerialNumber)
    }

    /// A control transfer. `requestType` carries the direction (bit 7 set: device to host, the
    /// answer is read into `data`). Returns the number of bytes transferred. A stall (the device
    /// refusing the request) throws `.rejected`.
    static func control(
        _ raw: OpaquePointer, node: String, requestType: UInt8, request: UInt8, value: UInt16, index: UInt16, data: UnsafeMutableRawBufferPointer, timeout: Duration
    ) throws -> Int {
        let n = libusb_control_transfer(
            raw, requestType, request, value, index, data.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt16(data.count),
            UInt32(max(1, timeout.nanoseconds / 1_000_000)))
        guard n >= 0 else {
            let operation = "control transfer (bmRequestType 0x\(String(requestType, radix: 16)), bRequest \(request))"
            let code: InstrumentError.Code = switch n {
            case LIBUSB_ERROR_NO_DEVICE.rawValue: .disconnected
            case LIBUSB_ERROR_TIMEOUT.rawValue: .replyTimedOut
            case LIBUSB_ERROR_PIPE.rawValue: .rejected
            default: .transportFailed
            }
            throw InstrumentError(code, device: node, "\(operation) failed", underlying: USBError(n, operation, device: node))
        }
        return Int(n)
    }

    /// A synchronous bulk OUT transfer of all of `bytes`.
    func bulkWrite(_ endpoint: UInt8, _ bytes: UnsafeRawBufferPointer, timeout: Duration) throws {
        var transferred: Int32 = 0
        let rc = libusb_bulk_transfer(
            raw, endpoint, UnsafeMutablePointer(mutating: bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)), Int32(bytes.count),
            &transferred, UInt32(max(1, timeout.nanoseconds / 1_000_000)))
        let operation = "bulk OUT of \(bytes.count) bytes to endpoint 0x\(String(endpoint, radix: 16))"
        switch rc {
        case 0:
            guard Int(transferred) == bytes.count else {
                throw InstrumentError(.transportFailed, device: info.node, "\(operation): only \(transferred) bytes were taken")
            }
        case LIBUSB_ERROR_NO_DEVICE.rawValue:
            throw InstrumentError(.disconnected, device: info.node, "\(operation) failed", underlying: USBError(rc, operation, device: info.node))
        case LIBUSB_ERROR_TIMEOUT.rawValue:
            throw InstrumentError(.replyTimedOut, device: info.node, "\(operation): the device did not take it within \(timeout)", underlying: USBError(rc, operation, device: info.node))
        case LIBUSB_ERROR_PIPE.rawValue:
            _ = libusb_clear_halt(raw, endpoint)
            throw InstrumentError(.transportFailed, device: info.node, "\(operation): the endpoint stalled (halt cleared)", underlying: USBError(rc, operation, device: info.node))
        default:
            throw InstrumentError(.transportFailed, device: info.node, "\(operation) failed", underlying: USBError(rc, operation, device: info.node))
        }
    }
}

/// Asynchronous bulk IN transfers kept in flight on one endpoint: each completion is stamped on
/// the event thread and queued, in order, for the reader, which copies it out and resubmits.
final class USBInPipe: @unchecked Sendable {
    /// What a transfer's user_data points at: its pipe and its slot.
    final class Slot {
        unowned(unsafe) let pipe: USBInPipe
        let index: Int
        init(pipe: USBInPipe, index: Int) {
            self.pipe = pipe
            self.index = index
        }
    }

    private let handle: USBDeviceHandle
    private let endpoint: UInt8
    private let size: Int
    private let clock: any HostClock
    private var slots: [Slot] = []
    private var transfers: [UnsafeMutablePointer<libusb_transfer>] = []
    private var buffers: [UnsafeMutableRawPointer] = []
    // Guarded by `lock`: completions in order (a ring of slot indices) with their status, length
    // and arrival time, and which slots libusb holds.
    private let lock = ConditionLock()
    private var queue: [Int]
    private var head = 0
    private var queued = 0
    private var status: [libusb_transfer_status]
    private var lengths: [Int]
    private var arrivals: [HostInstant]
    private var submitted: [Bool]
    private var pending = 0

    init(handle: USBDeviceHandle, endpoint: UInt8, size: Int, count: Int, clock: any HostClock) throws {
        self.handle = handle
        self.endpoint = endpoint
        self.size = size
        self.clock = clock
        queue = [Int](repeating: 0, count: count)
        status = [libusb_transfer_status](repeating: LIBUSB_TRANSFER_COMPLETED, count: count)
        lengths = [Int](repeating: 0, count: count)
        arrivals = [HostInstant](repeating: HostInstant(nanoseconds: 0), count: count)
        submitted = [Bool](repeating: false, count: count)
        for index in 0..<count {
            guard let t = libusb_alloc_transfer(0) else {
                _ = cancel()
                throw InstrumentError(.transportFailed, device: handle.info.node, "libusb_alloc_transfer failed")
            }
            let slot = Slot(pipe: self, index: index)
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
            t.pointee.dev_handle = handle.raw
            t.pointee.endpoint = endpoint
            t.pointee.type = UInt8(LIBUSB_TRANSFER_TYPE_BULK.rawValue)
            t.pointee.timeout = 0
            t.pointee.buffer = buffer.assumingMemoryBound(to: UInt8.self)
            t.pointee.length = Int32(size)
            t.pointee.user_data = Unmanaged.passUnretained(slot).toOpaque()
            t.pointee.callback = usbInCompleted
            slots.append(slot)
            transfers.append(t)
            buffers.append(buffer)
        }
        do {
            for index in 0..<count { try submit(index) }
        } catch {
            _ = cancel()
            throw error
        }
    }

    private func submit(_ index: Int) throws {
        lock.withLock {
            pending += 1
            submitted[index] = true
        }
        let rc = libusb_submit_transfer(transfers[index])
        if rc != 0 {
            lock.withLock {
                pending -= 1
                submitted[index] = false
            }
            try USBDeviceHandle.check(rc, "submitting a bulk IN transfer on endpoint 0x\(String(endpoint, radix: 16))", handle.info)
        }
    }

    /// Called on the event thread when libusb hands a transfer back.
    fileprivate func completed(_ index: Int, status s: libusb_transfer_status, length: Int) {
        let now = clock.now()
        lock.withLock {
            pending -= 1
            submitted[index] = false
            queue[(head + queued) % queue.count] = index
            status[index] = s
            lengths[index] = length
            arrivals[index] = now
            queued += 1
        }
        lock.broadcast()
    }

    enum Next {
        case data(Int, HostInstant)
        case timeout
    }

    /// For messages only (built on error paths, never per transfer).
    private var where_: String { "bulk IN endpoint 0x\(String(endpoint, radix: 16))" }

    /// The next completed transfer copied into `buffer` (its slot resubmitted), or `.timeout`.
    func next(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> Next {
        var index = -1
        var s = LIBUSB_TRANSFER_COMPLETED, length = 0, at = HostInstant(nanoseconds: 0)
        lock.withLock {
            if lock.wait(until: { queued > 0 }, timeout: timeout) {
                index = queue[head]
                head = (head + 1) % queue.count
                queued -= 1
                s = status[index]
                length = lengths[index]
                at = arrivals[index]
            }
        }
        guard index >= 0 else { return .timeout }
        switch s {
        case LIBUSB_TRANSFER_COMPLETED:
            guard length <= buffer.count else {
                try submit(index)
                throw InstrumentError(.protocolViolation, device: handle.info.node, "a \(length)-byte transfer on \(where_) does not fit the driver's \(buffer.count)-byte buffer")
            }
            if length > 0 { buffer.baseAddress!.copyMemory(from: buffers[index], byteCount: length) }
            try submit(index)
            return .data(length, at)
        case LIBUSB_TRANSFER_NO_DEVICE:
            throw InstrumentError(.disconnected, device: handle.info.node, "the device went away (\(where_) reported LIBUSB_TRANSFER_NO_DEVICE)")
        case LIBUSB_TRANSFER_STALL:
            _ = libusb_clear_halt(handle.raw, endpoint)
            try submit(index)
            throw InstrumentError(.transportFailed, device: handle.info.node, "\(where_) stalled; the halt was cleared")
        case LIBUSB_TRANSFER_OVERFLOW:
            try submit(index)
            throw InstrumentError(.protocolViolation, device: handle.info.node, "the device sent more than \(size) bytes in one transfer on \(where_)")
        case LIBUSB_TRANSFER_CANCELLED:
            throw InstrumentError(.disconnected, device: handle.info.node, "\(where_): transfer cancelled")
        case LIBUSB_TRANSFER_TIMED_OUT:
            try submit(index)
            return .timeout
        default:
            throw InstrumentError(.transportFailed, device: handle.info.node, "\(where_) failed (libusb transfer status \(s.rawValue)); check the cable")
        }
    }

    /// Cancels every transfer and waits (up to `limit`) until libusb has called each back, then
    /// frees them. Returns false when some never came back; their memory is then left alone
    /// (a leak is better than libusb writing into freed memory).
    func cancel(limit: Duration = .seconds(2)) -> Bool {
        let held = lock.withLock { submitted }
        for (index, t) in transfers.enumerated() where held[index] { _ = libusb_cancel_transfer(t) }
        let done = lock.withLock { lock.wait(until: { pending == 0 }, timeout: limit) }
        guard done else { return false }
        for t in transfers { libusb_free_transfer(t) }
        for b in buffers { b.deallocate() }
        transfers = []
        buffers = []
        slots = []
        return true
    }
}

private func usbInCompleted(_ transfer: UnsafeMutablePointer<libusb_transfer>?) {
    guard let transfer, let userData = transfer.pointee.user_data else { return }
    let slot = Unmanaged<USBInPipe.Slot>.fromOpaque(userData).takeUnretainedValue()
    slot.pipe.completed(slot.index, status: transfer.pointee.status, length: Int(transfer.pointee.actual_length))
}

/// A USB device's bulk endpoints as a packet transport: each receive returns one IN transfer,
/// stamped when libusb's event thread completed it, with several IN transfers kept in flight so
/// a fast device is never starved; each send is one OUT transfer.
///
/// The device is found by identity at every open, so it is found again after a replug at a new
/// address. It counts as gone when a transfer reports LIBUSB_TRANSFER_NO_DEVICE, when libusb's
/// hotplug reports it left, or (without hotplug) when it is missing from the device list, which
/// is checked every second while nothing arrives.
public final class USBBulkTransport: PacketTransport, @unchecked Sendable {
    public struct Options: Sendable {
        public var interface = 0
        public var configuration = 1
        /// Bytes per IN transfer (the largest packet the device sends).
        public var inTransferSize = 32768
        /// IN transfers kept in flight.
        public var transfersInFlight = 4
        public init() {}
    }

    public let match: USBDeviceMatch
    public let options: Options
    private let clock: any HostClock
    private let contextProvider: @Sendable () throws -> USBContext
    private var context: USBContext?
    private var handle: USBDeviceHandle?
    private var pipe: USBInPipe?
    private var departureToken: Int?
    private let departed = DepartureFlag()
    private var lastPresenceCheck = HostInstant(nanoseconds: 0)
    private var notes: [String] = []
    private var where_: String

    public init(match: USBDeviceMatch, options: Options = Options(), clock: any HostClock, context: @escaping @Sendable () throws -> USBContext = { try USBContext.shared() }) {
        self.match = match
        self.options = options
        self.clock = clock
        self.contextProvider = context
        where_ = "\(match)"
    }

    public var endpoint: String { where_ }
    public var openNotes: [String] { notes }

    public func open() throws {
        close()
        let context = try contextProvider()
        self.context = context
        let handle = try USBDeviceHandle(context: context, match: match, interface: options.interface, configuration: options.configuration)
        guard let inEP = handle.bulkIn, handle.bulkOut != nil else {
            handle.close()
            throw InstrumentError(.unsupported, device: handle.info.node, "interface \(options.interface) of \(match) has no bulk IN and OUT endpoint pair")
        }
        departed.value.store(false, ordering: .relaxed)
        let (bus, address) = (handle.info.bus, handle.info.address)
        if context.hasHotplug {
            departureToken = context.onDeparture { [departed] b, a in
                if b == bus && a == address { departed.value.store(true, ordering: .relaxed) }
            }
        }
        do {
            pipe = try USBInPipe(handle: handle, endpoint: inEP, size: options.inTransferSize, count: options.transfersInFlight, clock: clock)
        } catch {
            handle.close()
            throw error
        }
        self.handle = handle
        lastPresenceCheck = clock.now()
        where_ = "\(handle.info.node) (\(match))"
        let s = handle.strings
        notes = [
            "USB \(handle.info.portPath) bus \(bus) address \(address): \([s.manufacturer, s.product].compactMap { $0 }.joined(separator: " ")) serial \(s.serialNumber ?? "none"); "
                + "bulk OUT 0x\(String(handle.bulkOut!, radix: 16)), IN 0x\(String(inEP, radix: 16)) (max packet \(handle.maxPacketSize)), "
                + "\(options.transfersInFlight) × \(options.inTransferSize)-byte IN transfers in flight; disconnects seen by "
                + (context.hasHotplug ? "hotplug events" : "polling the device list")
        ]
    }

    public func close() {
        if let token = departureToken { context?.removeDepartureListener(token) }
        departureToken = nil
        if let pipe, !pipe.cancel() {
            notes.append("some IN transfers were never handed back by libusb; their buffers were left allocated")
        }
        pipe = nil
        handle?.close()
        handle = nil
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        guard let pipe else { throw InstrumentError(.disconnected, device: where_, "the USB device is not open") }
        if departed.value.load(ordering: .relaxed) {
            throw InstrumentError(.disconnected, device: where_, "the device was unplugged (hotplug event)")
        }
        while true {
            switch try pipe.next(into: buffer, timeout: timeout) {
            case .data(0, _):
                continue  // a zero-length packet ends a transfer that filled whole packets: nothing to hand on
            case .data(let n, let at):
                return TransportRead(count: n, hostTime: at)
            case .timeout:
                try checkPresence()
                return TransportRead(count: 0, hostTime: clock.now())
            }
        }
    }

    public func send(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws {
        guard let handle, let out = handle.bulkOut else { throw InstrumentError(.disconnected, device: where_, "the USB device is not open") }
        try handle.bulkWrite(out, bytes, timeout: timeout)
    }

    /// While nothing arrives: is the device still there? (Hotplug says so at once; else the
    /// device list is looked at, at most once a second.)
    private func checkPresence() throws {
        if departed.value.load(ordering: .relaxed) {
            throw InstrumentError(.disconnected, device: where_, "the device was unplugged (hotplug event)")
        }
        guard let context, let handle, !context.hasHotplug else { return }
        let now = clock.now()
        guard now.nanoseconds - lastPresenceCheck.nanoseconds >= 1_000_000_000 else { return }
        lastPresenceCheck = now
        let present = try context.devices().contains { $0.bus == handle.info.bus && $0.address == handle.info.address }
        if !present {
            throw InstrumentError(.disconnected, device: where_, "the device is no longer on the bus (unplugged)")
        }
    }
}

/// Set by a hotplug callback on the event thread when the open device leaves.
final class DepartureFlag: Sendable {
    let value = Atomic<Bool>(false)
}
