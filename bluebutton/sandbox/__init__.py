"""The offline sandbox: emulators of CMS Blue Button (`cms/`) and LinuxForHealth connect
(`connect/`), and the tools that drive them (`tools/`). The product never imports it."""
