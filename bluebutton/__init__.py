"""bluebutton: pulls Medicare claims from CMS Blue Button 2.0 and stores them in LinuxForHealth connect."""

__version__ = "0.1.0"
